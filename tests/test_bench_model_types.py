"""`python -m bench.model_types`: its options answer without measuring, and a tiny real run prints
every table with a ratio to the LSTM."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import model_types
from pipelines.settings import PROJECT_ROOT
from tests.conftest import stores_under


def test_help_answers_without_running_anything() -> None:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "bench.model_types", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "usage: python -m bench.model_types" in result.stdout
    assert "--full" in result.stdout
    assert "###" not in result.stdout  # no table: nothing was trained or timed
    assert time.perf_counter() - started < 30


def test_unknown_model_type_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        model_types.main(["--types", "logistic,xgboost"])

    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "xgboost" in err
    assert "lightgbm" in err  # the allowed types are named


def test_make_bench_runs_it() -> None:
    from bench.__main__ import BENCHMARKS

    assert "bench.model_types" in BENCHMARKS


@pytest.mark.slow
def test_tiny_run_prints_training_and_latency_with_ratios_to_the_lstm() -> None:
    report = model_types.run(
        types=("logistic",),
        max_rows=1200,
        epochs=1,
        sequence_length=12,
        repeats=(2, 5, 20),
        runtimes=False,
    )

    training, latency = report.split("### Served latency")
    # The LSTM was added as the peer; each type appears in both tables.
    assert re.search(r"^\| lstm \| [\d.]+ \| 1\.00x \| 1 \| 1 \| promoted \|$", training, re.M)
    assert re.search(r"^\| logistic \| [\d.]+ \| [\d.]+x \| \d+ \| 1 \|", training, re.M)
    logistic = next(line for line in latency.splitlines() if line.startswith("| logistic"))
    assert len(re.findall(r"\| [\d.]+x ", logistic)) == 3  # cold, uncached, cached / lstm
    assert "LightGBM's runtime" not in report  # runtimes=False


@pytest.mark.slow
def test_onnx_gives_lightgbms_probabilities(tmp_path: Path) -> None:
    figures = model_types.lightgbm_runtimes(
        stores_under(tmp_path), pair="BTC", trees=20, repeats=5, import_rounds=1
    )

    assert figures.failure is None
    assert figures.onnx is not None
    assert figures.max_abs_diff is not None
    assert figures.trees == 20
    assert figures.max_abs_diff < 1e-5
    assert figures.lightgbm.file_bytes > 0
    assert figures.onnx.file_bytes > 0
    assert figures.lightgbm.import_s > 0
    assert figures.onnx.import_s > 0
    table = model_types.runtime_table(figures)
    assert "ONNX / LightGBM: 1 row" in table
