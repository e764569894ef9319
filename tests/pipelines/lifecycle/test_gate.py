"""The offline gate's decision, case by case, on per-row loss differences of known location."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from pipelines.lifecycle.gate import (
    CHALLENGER,
    PRODUCTION,
    REJECTED,
    GateInputs,
    decide,
    unseen_rows,
)
from pipelines.lifecycle.intervals import paired_interval
from pipelines.lifecycle.proof import PROVEN, UNPROVEN


def _differences(mean: float, rows: int = 400, sd: float = 0.02, seed: int = 0) -> np.ndarray:
    """Per-row loss differences around `mean`: at 400 rows the 95 % interval is about ±0.002."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sd, rows)
    return mean + noise - noise.mean()  # the mean is exactly `mean`


# A challenger "3" against production "2", both proven, compared on 400 rows.
BASE = GateInputs(
    version="3",
    production="2",
    challenger_proof=PROVEN,
    production_proof=PROVEN,
    challenger_horizon=1,
    production_horizon=1,
    differences=_differences(0.0),
    window_rows=400,
    min_rows=100,
    margin=0.0,
    mode="offline",
)


CASES: list[tuple[str, dict[str, object], str, str]] = [
    (
        "forced, though unscored and unproven against proven",
        {"force": True, "challenger_problem": "broken", "challenger_proof": UNPROVEN},
        PRODUCTION,
        "promoted by the operator (--force)",
    ),
    ("already production", {"version": "2"}, PRODUCTION, "already the production version"),
    (
        "unscored, even as the first version",
        {"production": None, "challenger_problem": "it cannot be scored (boom)"},
        REJECTED,
        "it cannot be scored (boom), and an unscored version is never promoted",
    ),
    (
        "the first version, unproven",
        {"production": None, "production_proof": None, "challenger_proof": UNPROVEN},
        PRODUCTION,
        "no production version yet",
    ),
    (
        "production cannot be scored, the challenger is unproven and worse",
        {
            "production_problem": "its ONNX file is broken",
            "challenger_proof": UNPROVEN,
            "differences": _differences(0.5),
        },
        PRODUCTION,
        "production version 2 cannot be scored by this code (its ONNX file is broken)",
    ),
    (
        "another horizon",
        {"production_horizon": 3, "differences": _differences(-0.5)},
        REJECTED,
        "its horizon (1 candles ahead) differs from production version 2's (3 candles",
    ),
    (
        "unproven against proven, though far better on the rows",
        {"challenger_proof": UNPROVEN, "differences": _differences(-0.5)},
        REJECTED,
        "its proof is weaker than production version 2's: it is unproven",
    ),
    (
        "proven against unproven",
        {"production_proof": UNPROVEN},
        PRODUCTION,
        "not significantly worse than production version 2",
    ),
    (
        "unproven against unproven: compared",
        {"challenger_proof": UNPROVEN, "production_proof": UNPROVEN},
        PRODUCTION,
        "not significantly worse than production version 2",
    ),
    (
        "too few rows, though far better",
        {"differences": _differences(-0.5, rows=99), "seen_until": pd.Timestamp("2024-01-02")},
        REJECTED,
        "only 99 of the 400 rows of its test window are unseen by both versions (after "
        "2024-01-02T00:00Z), fewer than ML_GATE_MIN_ROWS = 100",
    ),
    ("no rows at all", {"differences": None}, REJECTED, "only 0 of the 400 rows"),
    (
        "significantly worse",
        {"differences": _differences(0.01)},
        REJECTED,
        "worse than production version 2 (the whole interval lies above +0)",
    ),
    (
        "worse, within the noise",
        {"differences": _differences(0.001)},
        PRODUCTION,
        "not significantly worse than production version 2 (the interval reaches +0 or below)",
    ),
    (
        "better, in shadow mode",
        {"differences": _differences(-0.01), "mode": "shadow"},
        CHALLENGER,
        "admitted as the challenger (ML_PROMOTION=shadow): production version 2 keeps",
    ),
    (
        "worse, in shadow mode",
        {"differences": _differences(0.01), "mode": "shadow"},
        REJECTED,
        "worse than production version 2",
    ),
]


@pytest.mark.parametrize(
    ("case", "changes", "outcome", "words"), [pytest.param(*case, id=case[0]) for case in CASES]
)
def test_the_decision_table(
    case: str, changes: dict[str, object], outcome: str, words: str
) -> None:
    answer = decide(replace(BASE, **changes))  # type: ignore[arg-type]

    assert answer.outcome == outcome, case
    assert words in answer.reason, answer.reason


def test_an_unproven_challenger_never_replaces_a_proven_production_version() -> None:
    better = replace(BASE, challenger_proof=UNPROVEN, differences=_differences(-0.05))

    for mode in ("offline", "shadow"):
        answer = decide(replace(better, mode=mode))
        assert answer.outcome == REJECTED
        assert answer.verdict is None
        assert answer.rows == 400  # counted, not compared
        assert "and production is proven" in answer.reason
    # The same rows with equal proof pass: the proof alone decided.
    assert decide(replace(better, production_proof=UNPROVEN)).outcome == PRODUCTION


def test_a_positive_margin_asks_for_an_improvement_of_that_size() -> None:
    tie = replace(BASE, differences=_differences(0.0))  # interval about [-0.002, +0.002]
    assert tie.differences is not None
    verdict = paired_interval(tie.differences)
    assert -0.01 < verdict.low < 0 < verdict.high < 0.01

    assert decide(tie).outcome == PRODUCTION
    asked = decide(replace(tie, margin=0.01))
    assert asked.outcome == REJECTED
    assert "the whole interval lies above -0.01" in asked.reason
    # An improvement of 0.01 within the interval passes the same margin.
    assert decide(replace(tie, margin=0.01, differences=_differences(-0.011))).passed


def test_a_negative_margin_tolerates_a_challenger_that_much_worse() -> None:
    worse = replace(BASE, differences=_differences(0.02))  # interval about [+0.018, +0.022]
    assert worse.differences is not None
    verdict = paired_interval(worse.differences)
    assert 0.01 < verdict.low < verdict.high < 0.05

    assert decide(worse).outcome == REJECTED
    tolerated = decide(replace(worse, margin=-0.05))
    assert tolerated.outcome == PRODUCTION
    assert "the interval reaches +0.05 or below" in tolerated.reason
    assert decide(replace(worse, margin=-0.01)).outcome == REJECTED


def test_a_comparison_states_its_interval_and_the_edge_it_can_detect() -> None:
    answer = decide(replace(BASE, differences=_differences(0.001, rows=400)))

    verdict = answer.verdict
    assert verdict is not None
    assert answer.rows == verdict.rows == 400
    # (z 0.975 + z 0.8) standard errors: what 400 rows can tell from no difference.
    edge = (1.959964 + 0.841621) * verdict.se
    assert verdict.detectable_edge() == pytest.approx(edge, rel=1e-5)
    assert (
        f"at 400 rows this comparison detects a difference of {edge:.4f} nats with 80 % power"
        in (answer.reason)
    )
    assert f"[{verdict.low:+.4f}, {verdict.high:+.4f}]" in answer.reason
    # Four times the rows detect about half the edge.
    more = decide(replace(BASE, differences=_differences(0.001, rows=1600), window_rows=1600))
    assert more.verdict is not None
    assert more.verdict.detectable_edge() == pytest.approx(edge / 2, rel=0.15)
    brier = decide(replace(BASE, loss="brier"))
    assert "in Brier score with 80 % power" in brier.reason


def test_rows_a_version_learnt_are_counted_as_left_out() -> None:
    answer = decide(replace(BASE, differences=_differences(0.0, rows=300)))

    assert answer.rows == 300
    assert "on the same 300 rows unseen by both versions, 100 rows a version learnt left out" in (
        answer.reason
    )


def test_unseen_rows_are_after_the_newest_candle_either_version_learnt() -> None:
    stamps = pd.date_range("2024-01-01", periods=10, freq="h", tz="UTC")

    older, newer = stamps[2], stamps[6]
    assert list(unseen_rows(stamps, learnt_through=(older, newer))) == list(stamps[7:])
    assert list(unseen_rows(stamps, learnt_through=(newer, older))) == list(stamps[7:])
    assert list(unseen_rows(stamps, learnt_through=(None, older))) == list(stamps[3:])
    assert list(unseen_rows(stamps, learnt_through=(None, None))) == list(stamps)
    assert unseen_rows(stamps, learnt_through=(stamps[-1],)).empty
