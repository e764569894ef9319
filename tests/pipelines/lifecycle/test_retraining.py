"""The retraining trigger as a table: each row a slot's facts and what the trigger must answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.lifecycle.retraining import (
    DRIFT,
    PRIORITY_SCHEDULE,
    PRIORITY_URGENT,
    SCHEDULE,
    STALE,
    Facts,
    Production,
    Rules,
    trigger,
    unseen_rows,
)

NOW = pd.Timestamp("2024-03-01T00:00Z")
H = pd.Timedelta(hours=1)
RULES = Rules(
    interval_hours=24, max_age_hours=168, gate_min_rows=100, horizon=1, timeframe=pd.Timedelta(H)
)


def _facts(**values: object) -> Facts:
    base: dict[str, object] = {
        "name": "BTC-lstm",
        "newest": NOW,
        "production": Production("3", data_end=NOW - 30 * H, fit_end=NOW - 200 * H),
    }
    return Facts(**(base | values))  # type: ignore[arg-type]


CASES = {
    "no production version": (_facts(production=None), None, "no production version"),
    "nothing new since the last training": (
        _facts(last_training_end=NOW),
        None,
        "no new candles since the last training's data end",
    ),
    "23 h of new candles": (_facts(production=Production("3", NOW - 23 * H)), None, "23 h of new"),
    "24 h of new candles": (_facts(production=Production("3", NOW - 24 * H)), SCHEDULE, "24 h"),
    "stale by its data end": (
        _facts(production=Production("3", NOW - 200 * H)),
        STALE,
        "its data ends 2024-02-21T16:00Z, 200 h before the newest candle",
    ),
    "kept by live candles 20 h ago: not stale, scheduled": (
        _facts(production=Production("3", NOW - 200 * H, validated_through=NOW - 20 * H)),
        SCHEDULE,
        "200 h of new candles",
    ),
    "validated long ago: stale from that candle": (
        _facts(production=Production("3", NOW - 300 * H, validated_through=NOW - 170 * H)),
        STALE,
        "live candles last validated it through 2024-02-22T22:00Z, 170 h before",
    ),
    "stale, but a training used newer data since": (
        _facts(production=Production("3", NOW - 200 * H), last_training_end=NOW - 5 * H),
        None,
        "but a training used data to",
    ),
    "drift": (_facts(drift="it drifts"), DRIFT, "BTC-lstm: it drifts"),
    "a challenger is being decided": (
        _facts(production=Production("3", NOW - 200 * H), challenger="4"),
        None,
        "challenger version 4 is being decided on live candles",
    ),
    "a challenger holds off drift too": (
        _facts(drift="it drifts", challenger="4"),
        None,
        "(due: BTC-lstm: it drifts)",
    ),
}


@pytest.mark.parametrize(("facts", "requested_by", "words"), CASES.values(), ids=CASES.keys())
def test_the_trigger(facts: Facts, requested_by: str | None, words: str) -> None:
    found = trigger(facts, RULES)
    assert found.requested_by == requested_by, found.reason
    assert words in found.reason
    urgent = requested_by in (STALE, DRIFT)
    assert found.priority == (PRIORITY_URGENT if urgent else PRIORITY_SCHEDULE)


@pytest.mark.parametrize(
    ("hours", "due"),
    [(24, False), (48, False), (72, False), (96, False), (100, False), (101, True), (120, True)],
)
def test_no_training_starts_before_the_gate_has_its_unseen_rows(hours: int, due: bool) -> None:
    """A refit production version learnt through its data end: the gate compares a new
    version on the rows after it, 100 at least (ML_GATE_MIN_ROWS)."""
    refit = Production("3", data_end=NOW - hours * H, fit_end=NOW - hours * H)
    found = trigger(_facts(production=refit), RULES)
    assert found.due is due, found.reason
    if not due:
        assert f"only {hours - 1} candles with a known outcome" in found.reason
        assert "ML_GATE_MIN_ROWS" in found.reason


def test_ties_are_no_unseen_rows() -> None:
    """An unchanged close is neither up nor down: the gate scores no tie, so the trigger does
    not count one."""
    times = pd.date_range(end=NOW, periods=130, freq="h")
    closes = pd.Series(100.0 + np.arange(130) % 7, index=times)
    fit_end = NOW - 105 * H
    assert unseen_rows(fit_end=fit_end, newest=NOW, rules=RULES) == 104
    assert unseen_rows(fit_end=fit_end, newest=NOW, rules=RULES, closes=closes) == 104
    closes.iloc[-60:-50] = closes.iloc[-61]  # ten closes unchanged from the one before
    assert unseen_rows(fit_end=fit_end, newest=NOW, rules=RULES, closes=closes) == 94
    refit = Production("3", data_end=fit_end, fit_end=fit_end)
    assert trigger(_facts(production=refit), RULES).due
    assert not trigger(_facts(production=refit, closes=closes), RULES).due
