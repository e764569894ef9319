"""The answer's signal: BUY, SELL or HOLD for a candle, and every reason it is held.

One pure function, `served_signal`, decides for the service (`service.predictor`: when it
computes an answer, and again when it serves it, as the candle ages) and for `tbml backtest`
alike. From the probability of "up" the thresholds give the raw signal (BUY at or above
`ML_BUY_THRESHOLD`, SELL at or below `ML_SELL_THRESHOLD`, HOLD between: `band`); it is held
at HOLD, whatever the thresholds say, for each of:

- `unproven`: the version does not beat its strongest baseline (`proof`), unless
  `ML_SERVE_UNPROVEN`;
- `small_move`: its magnitude forecast (`move`, the probability that the next move clears the
  round-trip fee, `pipelines.magnitude`) is below `ML_MOVE_THRESHOLD`, unless `ML_MOVE_GATE`
  is off; a version without a magnitude forecast is not held for it (there is nothing to
  read), and the answer says so;
- `stale_candle` / `stale_model`: the candle closed more than `ML_STALE_AFTER` timeframes ago,
  or the version's newest evidence is older than `ML_MODEL_MAX_AGE_HOURS` (`staleness`), unless
  `ML_SERVE_STALE`.

`held_by` lists the reasons in that order; `reason` is the first of them, or `band` for a raw
HOLD, or None for a BUY or SELL. The backtest counts held hours by `reason`.
"""

from __future__ import annotations

from dataclasses import dataclass

BUY, SELL, HOLD = "BUY", "SELL", "HOLD"
BAND = "band"
UNPROVEN = "unproven"
SMALL_MOVE = "small_move"
STALE_CANDLE = "stale_candle"
STALE_MODEL = "stale_model"
NO_MODEL = "no_model"  # nothing served (the backtest before its first version, a fallback)
HOLD_REASONS: tuple[str, ...] = (NO_MODEL, STALE_MODEL, STALE_CANDLE, UNPROVEN, SMALL_MOVE, BAND)


@dataclass(frozen=True)
class SignalRules:
    """The settings the signal reads."""

    buy_threshold: float  # ML_BUY_THRESHOLD
    sell_threshold: float  # ML_SELL_THRESHOLD
    serve_unproven: bool = False  # ML_SERVE_UNPROVEN
    serve_stale: bool = False  # ML_SERVE_STALE
    move_gate: bool = True  # ML_MOVE_GATE
    move_threshold: float = 0.5  # ML_MOVE_THRESHOLD

    def __post_init__(self) -> None:
        if not 0.0 <= self.sell_threshold < self.buy_threshold <= 1.0:
            raise ValueError(
                f"need 0 <= sell threshold < buy threshold <= 1, got {self.sell_threshold} and "
                f"{self.buy_threshold}"
            )
        if not 0.0 <= self.move_threshold <= 1.0:
            raise ValueError(f"the move threshold must be within [0, 1], got {self.move_threshold}")


@dataclass(frozen=True)
class Signal:
    """The signal served, the one the thresholds alone gave, and what held it."""

    signal: str
    raw: str
    held_by: tuple[str, ...] = ()

    @property
    def reason(self) -> str | None:
        """Why the answer is HOLD (the first reason; `band` for a raw HOLD); None otherwise."""
        if self.held_by:
            return self.held_by[0]
        return BAND if self.signal == HOLD else None


def raw_signal(probability: float, *, buy_threshold: float, sell_threshold: float) -> str:
    """BUY at or above the buy threshold, SELL at or below the sell threshold, else HOLD."""
    if probability >= buy_threshold:
        return BUY
    if probability <= sell_threshold:
        return SELL
    return HOLD


def served_signal(
    probability: float,
    *,
    rules: SignalRules,
    unproven: bool = False,
    move: float | None = None,
    stale_candle: bool = False,
    stale_model: bool = False,
) -> Signal:
    """The signal served for one answer (see the module docstring)."""
    raw = raw_signal(
        probability, buy_threshold=rules.buy_threshold, sell_threshold=rules.sell_threshold
    )
    held = list(stale_holds(rules=rules, stale_candle=stale_candle, stale_model=stale_model))
    if unproven and not rules.serve_unproven:
        held.append(UNPROVEN)
    if rules.move_gate and move is not None and move < rules.move_threshold:
        held.append(SMALL_MOVE)
    return Signal(signal=HOLD if held else raw, raw=raw, held_by=tuple(held))


def stale_holds(*, rules: SignalRules, stale_candle: bool, stale_model: bool) -> tuple[str, ...]:
    """The staleness reasons that hold a signal (none with `ML_SERVE_STALE`). The service
    applies them when it serves an answer (a candle ages after its answer was computed): the
    answer's signal then is HOLD when any holds, which is what `served_signal` gives."""
    if rules.serve_stale:
        return ()
    return tuple(
        reason
        for reason, holds in ((STALE_MODEL, stale_model), (STALE_CANDLE, stale_candle))
        if holds
    )


def small_move_words(move: float, rules: SignalRules) -> str:
    """One sentence on a signal held for its magnitude forecast."""
    return (
        f"the next move clears the round-trip fee with probability {move:.3f}, below "
        f"ML_MOVE_THRESHOLD {rules.move_threshold:g}; signal held at HOLD (ML_MOVE_GATE=true)"
    )
