"""The paired interval keeps its coverage on real per-row differences: `bench.verdict_coverage`,
fast.

The bench itself draws thousands of series of every pair at every size; here a few hundred of
BTC's at the sizes the gate and a week of shadow scoring compare on, with a looser band.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import verdict_coverage
from bench.drift_alarms import null_differences
from bench.verdict_coverage import measure, stationary_bootstrap
from pipelines.candles.store import CandleStore
from tests.conftest import stores_under


@pytest.fixture(scope="module")
def btc(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    settings = stores_under(tmp_path_factory.mktemp("coverage"))
    store = CandleStore(
        bundled_dir=settings.bundled_data_dir,
        data_dir=settings.data_dir,
        quote=settings.quote_currency,
    )
    return [null_differences(store, "BTC")]


@pytest.mark.parametrize("rows", [100, 500])
def test_the_95_percent_interval_covers_90_to_98_percent_of_null_series(
    btc: list[np.ndarray], rows: int
) -> None:
    row = measure(btc, rows, reps=400, peer=rows == 100, seed=rows)

    assert 0.90 <= row.coverage <= 0.98
    # More rows detect smaller edges, and a larger shift is found more often.
    assert row.power[0.01] > row.power[0.002]
    if row.peer_coverage is not None:
        # The moving-block bootstrap the lifecycle used before falls short at this size.
        assert row.peer_coverage < row.coverage - 0.05


def test_more_rows_find_a_shift_more_often(btc: list[np.ndarray]) -> None:
    few = measure(btc, 100, reps=200, peer=False, seed=1)
    many = measure(btc, 2000, reps=200, peer=False, seed=1)

    assert many.power[0.01] > few.power[0.01] + 0.3
    assert many.detectable < few.detectable / 3


def test_the_stationary_bootstrap_draws_stretches_of_consecutive_rows() -> None:
    pool = np.arange(1000.0)

    drawn = stationary_bootstrap(pool, 20_000, rng=np.random.default_rng(0), mean_stretch=24)

    assert drawn.size == 20_000
    assert np.isin(drawn, pool).all()
    # A stretch goes on where the next value is the next row of the pool (wrapping round).
    breaks = np.count_nonzero(drawn[1:] != (drawn[:-1] + 1) % 1000)
    assert 20_000 / (breaks + 1) == pytest.approx(24, rel=0.15)


def test_help_answers_without_measuring(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(**_: object) -> str:
        raise AssertionError("--help must not run the bench")

    monkeypatch.setattr(verdict_coverage, "run", refuse)

    with pytest.raises(SystemExit) as exit_:
        verdict_coverage.main(["--help"])

    assert exit_.value.code == 0
    assert "usage: python -m bench.verdict_coverage" in capsys.readouterr().out


def test_make_bench_runs_it() -> None:
    from bench.__main__ import BENCHMARKS

    assert "bench.verdict_coverage" in BENCHMARKS
