"""The challenger policy as a table: rows paired by candle time, the margin's sign, the proofs,
the clock; each case has inputs where the wrong rule gives another answer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pipelines.lifecycle.challenger import (
    PROMOTE,
    RETIRE,
    WAITING,
    Decision,
    Rules,
    decide,
    pair_rows,
)
from pipelines.lifecycle.proof import PROVEN, UNPROVEN, Proof

HOUR_MS = 3_600_000
RULES = Rules(min_outcomes=120, max_hours=336.0, margin=0.0)


@dataclass(frozen=True)
class Rows:
    """One version's realised rows (the shape the history gives)."""

    candle_time: np.ndarray
    probability: np.ndarray
    outcome: np.ndarray
    horizon: np.ndarray


def _rows(
    candles: np.ndarray, probability: np.ndarray, outcome: np.ndarray, horizon: int = 1
) -> Rows:
    return Rows(
        candle_time=candles.astype(np.int64) * HOUR_MS,
        probability=probability,
        outcome=outcome.astype(np.int8),
        horizon=np.full(candles.size, horizon),
    )


def _market(n: int = 200, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes of `n` candles and a forecaster that leans the right way on each (p 0.6/0.4,
    jittered)."""
    rng = np.random.default_rng(seed)
    up = rng.integers(0, 2, n)
    lean = np.where(up == 1, 0.6, 0.4) + rng.normal(0, 0.05, n)
    return up, np.clip(lean, 0.05, 0.95)


def _decide(
    challenger: Rows,
    production: Rows | None,
    *,
    rules: Rules = RULES,
    challenger_proof: Proof = PROVEN,
    production_proof: Proof = PROVEN,
    hours: float | None = 150.0,
) -> Decision:
    return decide(
        challenger=challenger,
        production=production,
        challenger_proof=challenger_proof,
        production_proof=production_proof,
        hours=hours,
        rules=rules,
    )


def test_rows_are_paired_by_candle_time_when_one_version_missed_candles() -> None:
    """Both versions forecast alike; production missed the first 30 candles, confidently wrong
    ones. Paired by time they are level (promoted); paired by position the challenger's hard
    candles would face production's easy ones and it would look significantly worse."""
    up, lean = _market()
    candles = np.arange(200)
    lean = lean.copy()
    lean[:30] = np.where(up[:30] == 1, 0.05, 0.95)  # both miss these, confidently
    rng = np.random.default_rng(3)
    mine = np.clip(lean + rng.normal(0, 0.01, 200), 0.01, 0.99)
    challenger = _rows(candles, mine, up)
    production = _rows(candles[30:], lean[30:], up[30:])

    found = _decide(challenger, production)

    assert found.rows == 170
    assert found.action == PROMOTE, found.reason
    assert found.last_candle_ms == 199 * HOUR_MS
    assert found.verdict is not None
    assert abs(found.verdict.mean) < 0.01
    # Production's rows come in any order: pairing does not depend on it.
    order = np.random.default_rng(1).permutation(170)
    shuffled = _rows(candles[30:][order], lean[30:][order], up[30:][order])
    assert _decide(challenger, shuffled).verdict == found.verdict


def test_rows_whose_horizons_differ_or_whose_outcome_is_unknown_are_not_paired() -> None:
    up, lean = _market(40)
    candles = np.arange(40)
    two_ahead = _rows(candles, lean, up, horizon=2)
    one_ahead = _rows(candles, lean, up, horizon=1)
    assert pair_rows(two_ahead, one_ahead).candle_time.size == 0
    tie = up.astype(np.int8).copy()
    tie[5] = -1  # neither up nor down
    paired = pair_rows(_rows(candles, lean, tie), one_ahead)
    assert paired.candle_time.size == 39
    assert 5 * HOUR_MS not in paired.candle_time


@pytest.mark.parametrize(("margin", "action"), [(0.01, RETIRE), (-0.01, PROMOTE), (0.0, RETIRE)])
def test_the_margin_s_sign_decides_a_slightly_worse_challenger(margin: float, action: str) -> None:
    """The challenger is worse by about 0.003 nats, significantly (the interval lies above 0,
    below 0.01): retired at a margin of +0.01 or 0, promoted when -0.01 tolerates it."""
    up, lean = _market(2000, seed=11)
    candles = np.arange(2000)
    rng = np.random.default_rng(5)
    worse = np.clip(lean + np.where(up == 1, -0.002, 0.002) + rng.normal(0, 0.02, 2000), 0.01, 0.99)
    found = _decide(
        _rows(candles, worse, up),
        _rows(candles, lean, up),
        rules=Rules(min_outcomes=120, max_hours=336.0, margin=margin),
    )

    assert found.verdict is not None
    assert 0 < found.verdict.low < 0.01, found.verdict
    assert found.action == action, found.reason
    assert f"ML_PROMOTION_MARGIN {margin:g}" in found.reason


def test_an_unproven_challenger_never_replaces_a_proven_production_version() -> None:
    """It is far better on the rows, and still retired; against an unproven production version,
    or proven itself, the same rows promote it."""
    up, lean = _market()
    candles = np.arange(200)
    sharp = np.where(up == 1, 0.9, 0.1)
    challenger, production = _rows(candles, sharp, up), _rows(candles, lean, up)

    found = _decide(challenger, production, challenger_proof=UNPROVEN, production_proof=PROVEN)
    assert found.action == RETIRE
    assert found.verdict is not None
    assert found.verdict.better()
    assert "proof is weaker than production's (unproven against proven)" in found.reason
    assert found.last_candle_ms == 199 * HOUR_MS  # decided on live rows: production validated

    for proofs in ((UNPROVEN, UNPROVEN), (PROVEN, UNPROVEN), (PROVEN, PROVEN)):
        again = _decide(
            challenger, production, challenger_proof=proofs[0], production_proof=proofs[1]
        )
        assert again.action == PROMOTE, proofs


def test_too_few_rows_wait_and_after_max_hours_retire_without_validating() -> None:
    up, lean = _market(119)
    rows = _rows(np.arange(119), lean, up)

    waiting = _decide(rows, rows, hours=300.0)
    assert (waiting.action, waiting.rows, waiting.verdict) == (WAITING, 119, None)
    assert waiting.reason == "119 of the 120 realised outcomes both versions predicted " + (
        "(ML_CHALLENGER_MIN_OUTCOMES)"
    )
    late = _decide(rows, rows, hours=337.0)
    assert late.action == RETIRE
    assert "more than ML_CHALLENGER_MAX_HOURS = 336" in late.reason
    assert late.last_candle_ms is None
    assert not late.validates
    assert _decide(rows, None, hours=None).action == WAITING  # production has no rows yet


def test_the_reason_states_the_edge_the_rows_can_detect() -> None:
    up, lean = _market(200)
    rows = _rows(np.arange(200), lean, up)
    found = _decide(rows, rows)
    assert found.verdict is not None
    edge = found.verdict.detectable_edge()
    assert f"these rows detect an edge of {edge:.4f} nats or more (80 % power)" in found.reason
    assert found.action == PROMOTE
