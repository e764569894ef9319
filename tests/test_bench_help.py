"""Every bench answers `--help`: `python -m bench` and `python -m bench.<name>` print their usage
and exit 0 without measuring anything; their options replace the defaults they read from the
environment, and the child modes the benches run themselves with still do what they did."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import bench
from pipelines.settings import PROJECT_ROOT

# `python -m bench` itself, then every module of the package (`__main__` is `python -m bench`).
MODULES = [
    "bench",
    *(
        f"bench.{info.name}"
        for info in pkgutil.iter_modules(bench.__path__)
        if not info.name.startswith("_")
    ),
]
# What a bench imports only once it measures: `--help` must answer before any of them.
HEAVY = ("tensorflow", "keras", "mlflow", "service")


def _imported(importtime: str) -> set[str]:
    """Top-level packages named in `python -X importtime`'s report."""
    names = set()
    for line in importtime.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("module", MODULES, ids=MODULES)
def test_help_answers_without_running_anything(module: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, "--help"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert f"usage: python -m {module} " in result.stdout
    assert "###" not in result.stdout  # no table: nothing was measured
    assert not [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert not list(tmp_path.iterdir())  # no temporary store, data folder or log
    assert not _imported(result.stderr) & set(HEAVY)


def test_every_module_is_discovered() -> None:
    assert "bench.scale_pairs" in MODULES
    assert "bench.verdict_coverage" in MODULES
    assert "bench.__main__" not in MODULES


# The child modes: (module, argv, the function it runs, the arguments it is given). Each prints
# the function's answer as the JSON of its last line, which `run_child` and `_bare` read.
CHILDREN = [
    pytest.param(
        "bench.scale_pairs",
        ["--prepare", "3"],
        "prepare_registry",
        (["P001", "P002", "P003"],),
        id="scale_pairs--prepare",
    ),
    pytest.param(
        "bench.scale_pairs",
        ["--refresh", "2", "/cache"],
        "time_refresh",
        (["P001", "P002"], "/cache"),
        id="scale_pairs--refresh",
    ),
    pytest.param("bench.live_loop", ["--train", "BTC"], "train_tiny", ("BTC",), id="live_loop"),
    pytest.param(
        "bench.predict_latency", ["--train"], "train_models", (), id="predict_latency--train"
    ),
    pytest.param("bench.train_overhead", ["--bare"], "bare_fit", (), id="train_overhead--bare"),
]


@pytest.mark.parametrize(("module", "argv", "function", "expected"), CHILDREN)
def test_child_modes_run_their_function_not_the_bench(
    module: str,
    argv: list[str],
    function: str,
    expected: tuple[Any, ...],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bench_module = importlib.import_module(module)
    calls: list[tuple[Any, ...]] = []

    def child(*args: Any) -> dict[str, str]:
        calls.append(args)
        return {"child": function}

    def run(**kwargs: Any) -> str:
        raise AssertionError("a child mode must not run the bench")

    monkeypatch.setattr(bench_module, function, child)
    monkeypatch.setattr(bench_module, "run", run)

    assert bench_module.main(argv) == 0
    assert calls == [expected]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == {"child": function}


def test_floor_child_serves_on_the_port_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import predict_latency

    ports: list[int] = []
    monkeypatch.setattr(predict_latency, "serve_floor", ports.append)
    monkeypatch.setattr(predict_latency, "run", lambda: pytest.fail("the bench ran"))

    assert predict_latency.main(["--floor", "8123"]) == 0
    assert ports == [8123]


# (module, argv, the module constants it sets, the environment its children read, run's keywords)
OPTIONS = [
    pytest.param("bench.features", ["--pair", "ETH"], {}, {}, {"pair": "ETH"}, id="features"),
    pytest.param(
        "bench.queue_ops",
        ["--history", "40", "--rounds", "30", "--postgres-url", "postgresql://x@127.0.0.1/y"],
        {"HISTORY": 40, "ROUNDS": 30, "POSTGRES_URL": "postgresql://x@127.0.0.1/y"},
        {},
        {},
        id="queue_ops",
    ),
    pytest.param(
        "bench.registry_cost", ["--repeat", "1"], {"REPEAT": 1}, {}, {}, id="registry_cost"
    ),
    pytest.param(
        "bench.replicas",
        ["--clients", "4", "--seconds", "2.5", "--rounds", "1"],
        {"CLIENTS": 4, "SECONDS": 2.5, "ROUNDS": 1},
        {},
        {},
        id="replicas",
    ),
    pytest.param(
        "bench.live_loop",
        ["--candles", "20", "--interval", "0.25"],
        {"CANDLES": 20, "INTERVAL_S": 0.25},
        {},
        {},
        id="live_loop",
    ),
    pytest.param(
        "bench.predict_latency",
        ["--train-rows", "800", "--rounds", "1", "--requests", "50", "--clients", "2"],
        {"TRAIN_ROWS": 800, "ROUNDS": 1, "REQUESTS": 50, "CLIENTS": 2},
        {"BENCH_LATENCY_TRAIN_ROWS": "800"},
        {},
        id="predict_latency",
    ),
    pytest.param(
        "bench.scale_pairs",
        ["--sizes", "2,3", "--steady-refreshes", "7", "--feed-candles", "4"],
        {"SIZES": (2, 3), "REFRESHES": 7, "FEED_CANDLES": 4},
        {"BENCH_SCALE_REFRESHES": "7"},
        {},
        id="scale_pairs",
    ),
    pytest.param(
        "bench.magnitude",
        ["--pairs", "btc,eth", "--folds", "2", "--fold-rows", "500", "--fee", "0.0005"],
        {},
        {},
        {"pairs": ("BTC", "ETH"), "folds": 2, "fold_rows": 500, "fee": 0.0005},
        id="magnitude",
    ),
    pytest.param(
        "bench.train_overhead",
        ["--pair", "ETH", "--epochs", "1", "--rows", "800", "--rounds", "1"],
        {"PAIR": "ETH", "EPOCHS": 1, "ROWS": 800, "ROUNDS": 1},
        {"BENCH_PAIR": "ETH", "BENCH_EPOCHS": "1", "BENCH_TRAIN_ROWS": "800"},
        {},
        id="train_overhead",
    ),
]


def _stub_run(
    monkeypatch: pytest.MonkeyPatch, bench_module: Any, names: list[str]
) -> list[dict[str, Any]]:
    """Replace the module's `run` by a recorder; `names`' constants and the BENCH_ environment
    are restored after the test."""
    for name in names:
        monkeypatch.setattr(bench_module, name, getattr(bench_module, name))
    for key in [k for k in os.environ if k.startswith("BENCH_")]:
        monkeypatch.setenv(key, os.environ[key])
    runs: list[dict[str, Any]] = []

    def run(**kwargs: Any) -> str:
        runs.append(kwargs)
        return ""

    monkeypatch.setattr(bench_module, "run", run)
    return runs


@pytest.mark.parametrize(("module", "argv", "constants", "environ", "run_kwargs"), OPTIONS)
def test_options_replace_the_defaults_and_reach_the_children(
    module: str,
    argv: list[str],
    constants: dict[str, Any],
    environ: dict[str, str],
    run_kwargs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench_module = importlib.import_module(module)
    for key in environ:
        monkeypatch.delenv(key, raising=False)
    runs = _stub_run(monkeypatch, bench_module, list(constants))

    assert bench_module.main(argv) == 0
    assert runs == [run_kwargs]
    assert {name: getattr(bench_module, name) for name in constants} == constants
    assert {key: os.environ.get(key) for key in environ} == environ


@pytest.mark.parametrize(("module", "argv", "constants", "environ", "run_kwargs"), OPTIONS)
def test_no_options_change_nothing(
    module: str,
    argv: list[str],
    constants: dict[str, Any],
    environ: dict[str, str],
    run_kwargs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench_module = importlib.import_module(module)
    runs = _stub_run(monkeypatch, bench_module, list(constants))
    before = {name: getattr(bench_module, name) for name in constants}
    environ = dict(os.environ)

    assert bench_module.main([]) == 0
    assert len(runs) == 1
    assert {name: getattr(bench_module, name) for name in constants} == before
    assert dict(os.environ) == environ


def test_make_bench_runs_python_m_bench() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()

    assert "-m bench\n" in makefile
