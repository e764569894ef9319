"""The served signal: thresholds, then every reason that holds it at HOLD."""

from __future__ import annotations

import pytest

from pipelines.lifecycle.signal import (
    BAND,
    HOLD,
    SMALL_MOVE,
    STALE_CANDLE,
    STALE_MODEL,
    UNPROVEN,
    SignalRules,
    served_signal,
    stale_holds,
)
from pipelines.settings import Settings

RULES = SignalRules(buy_threshold=0.6, sell_threshold=0.4, move_threshold=0.5)


@pytest.mark.parametrize(
    ("p", "raw"), [(0.61, "BUY"), (0.6, "BUY"), (0.59, HOLD), (0.41, HOLD), (0.4, "SELL")]
)
def test_the_thresholds_give_the_raw_signal(p: float, raw: str) -> None:
    signal = served_signal(p, rules=RULES, move=0.9)

    assert (signal.signal, signal.raw) == (raw, raw)
    assert signal.reason == (BAND if raw == HOLD else None)


@pytest.mark.parametrize(("move", "held"), [(0.49, True), (0.5, False), (0.8, False)])
def test_a_small_move_holds_a_buy_at_the_threshold(move: float, held: bool) -> None:
    signal = served_signal(0.7, rules=RULES, move=move)

    assert signal.signal == (HOLD if held else "BUY")
    assert signal.held_by == ((SMALL_MOVE,) if held else ())


def test_the_move_gate_off_or_no_forecast_holds_nothing() -> None:
    ungated = SignalRules(buy_threshold=0.6, sell_threshold=0.4, move_gate=False)

    assert served_signal(0.3, rules=ungated, move=0.01).signal == "SELL"
    assert served_signal(0.3, rules=RULES, move=None).signal == "SELL"


def test_every_reason_is_listed_in_order() -> None:
    signal = served_signal(
        0.9, rules=RULES, unproven=True, move=0.1, stale_candle=True, stale_model=True
    )

    assert signal.signal == HOLD
    assert signal.raw == "BUY"
    assert signal.held_by == (STALE_MODEL, STALE_CANDLE, UNPROVEN, SMALL_MOVE)
    assert signal.reason == STALE_MODEL


def test_the_operator_serves_unproven_and_stale_signals() -> None:
    lenient = SignalRules(
        buy_threshold=0.6, sell_threshold=0.4, serve_unproven=True, serve_stale=True
    )

    assert served_signal(0.9, rules=lenient, unproven=True, stale_candle=True).signal == "BUY"
    assert stale_holds(rules=lenient, stale_candle=True, stale_model=True) == ()
    assert stale_holds(rules=RULES, stale_candle=False, stale_model=True) == (STALE_MODEL,)


def test_rules_refuse_thresholds_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="sell threshold < buy threshold"):
        SignalRules(buy_threshold=0.4, sell_threshold=0.6)
    with pytest.raises(ValueError, match="move threshold must be within"):
        SignalRules(buy_threshold=0.6, sell_threshold=0.4, move_threshold=1.5)


def test_settings_give_the_rules_and_ml_fee_names_the_fee(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ML_MOVE_THRESHOLD", "0.55")
    monkeypatch.setenv("ML_MOVE_GATE", "false")
    monkeypatch.setenv("ML_FEE", "0.0005")
    settings = Settings(_env_file=None)

    rules = settings.signal_rules()
    assert (rules.move_threshold, rules.move_gate) == (0.55, False)
    assert settings.trading_fee == 0.0005
