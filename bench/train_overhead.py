"""What the platform adds to training: `mlflow run -e train` against a bare Keras `fit`.

Both sides fit the same default model (LSTM, 2 x 50 units, sequence length 60, batch 32) on the
same arrays: the training windows and labels that `mlproject.data` builds for a pair (BTC by
default, `BENCH_PAIR` to change; all candles, or the newest `BENCH_TRAIN_ROWS`), for
`BENCH_EPOCHS` epochs (3), `BENCH_ROUNDS` times (2). Each side runs in its own child process,
so that peak memory (max RSS of the process tree) is its own.

- platform: the real `mlflow run . -e train --env-manager local` into a temporary tracking
  store, with early stopping, per-epoch MLflow logging, deterministic kernels and everything
  after the fit (baselines, plots, ONNX export, model logging). Its fit time is the run's
  `fit_seconds` metric and its steady epoch the mean of `epoch_seconds` after the first epoch.
- bare: `model.fit(x, y, validation_data=..., epochs, batch_size)` with no callbacks, seeds
  or determinism, on arrays built by the same code.

Run alone with `python -m bench.train_overhead` (`--help` for the options).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.settings import PROJECT_ROOT

PAIR = os.environ.get("BENCH_PAIR", "BTC")
EPOCHS = int(os.environ.get("BENCH_EPOCHS", "3"))
ROWS = int(os.environ.get("BENCH_TRAIN_ROWS", "0"))
# Rounds of both sides, alternating which goes first; medians are reported (2 shared cores are
# noisy: single epochs vary by 10-15 % from run to run).
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))

# Runs `argv` as a child and reports the peak RSS of its process tree (children are reaped,
# so RUSAGE_CHILDREN holds the largest of them).
_MEASURE = (
    "import json, resource, subprocess, sys, time; t = time.perf_counter(); "
    "r = subprocess.run(sys.argv[1:]); "
    "print(json.dumps({'rc': r.returncode, 'wall': time.perf_counter() - t, "
    "'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))"
)


def _measured(argv: list[str], *, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    if report["rc"] != 0:
        raise RuntimeError(f"{argv[:4]} failed:\n{result.stderr[-3000:]}")
    report["stdout"] = lines[:-1]
    return report


def _platform(tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    run_env = {**env, "MLFLOW_TRACKING_URI": tracking, "ML_ARTIFACT_ROOT": str(tmp / "mlruns")}
    argv = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "train"]
    params = {"pair": PAIR, "epochs": EPOCHS, "max_rows": ROWS, "register": "false"}
    for key, value in params.items():
        argv += ["-P", f"{key}={value}"]
    argv += ["--env-manager", "local", "--experiment-name", "bench"]
    report = _measured(argv, env=run_env, cwd=tmp)
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("bench")
    if experiment is None:
        raise RuntimeError("the platform run left no experiment")
    (run,) = client.search_runs([experiment.experiment_id])
    epochs = [m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds")]
    report.update(
        fit=run.data.metrics["fit_seconds"],
        epochs=len(epochs),
        steady=statistics.mean(epochs[1:]) if len(epochs) > 1 else epochs[0],
        samples=int(run.data.metrics["train_rows"]),
    )
    return report


def _bare(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.train_overhead", "--bare"]
    report = _measured(argv, env=env, cwd=cwd)
    report.update(json.loads(report["stdout"][-1]))
    return report


def bare_fit() -> dict[str, Any]:
    """The bare side, in this process: arrays from the platform's data code, a plain fit."""
    import keras

    from mlproject.architectures import build_model
    from mlproject.config import TrainConfig
    from mlproject.data import fit_scaler, labels, time_split, windows
    from mlproject.train import load_dataset
    from pipelines.settings import get_settings

    settings = get_settings()
    config = TrainConfig.from_settings(settings, pair=PAIR, max_rows=ROWS)
    dataset = load_dataset(config, settings=settings, max_rows=config.max_rows)
    split = time_split(
        dataset, val_fraction=settings.validation_fraction, test_fraction=settings.test_fraction
    )
    scaler = fit_scaler(dataset, split)
    x, y = windows(dataset, scaler, split.train), labels(dataset, split.train)
    x_val, y_val = windows(dataset, scaler, split.val), labels(dataset, split.val)
    model = build_model(
        model_type=config.model_type,
        sequence_length=config.sequence_length,
        n_features=x.shape[2],
        units=config.units,
        layers=config.layers,
        dropout=config.dropout,
        learning_rate=config.learning_rate,
    )
    times: list[float] = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            times.append(time.perf_counter() - self.started)

    started = time.perf_counter()
    model.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=EPOCHS,
        batch_size=config.batch_size,
        callbacks=[Clock()],
        verbose=0,
    )
    fit = time.perf_counter() - started
    return {
        "fit": fit,
        "epochs": len(times),
        "steady": statistics.mean(times[1:]) if len(times) > 1 else times[0],
        "samples": int(x.shape[0]),
    }


def run() -> str:
    """Both sides, one after the other; a markdown table with the ratios."""
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # The entry point's command runs `python`: the one of this environment.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    platforms: list[dict[str, Any]] = []
    bares: list[dict[str, Any]] = []
    for round_ in range(ROUNDS):
        for side in ("platform", "bare") if round_ % 2 == 0 else ("bare", "platform"):
            if side == "bare":
                bares.append(_bare(env, PROJECT_ROOT))
                continue
            with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
                platforms.append(_platform(Path(tmp), env))
    if platforms[0]["samples"] != bares[0]["samples"]:
        raise RuntimeError(
            f"different arrays: {platforms[0]['samples']} vs {bares[0]['samples']} samples"
        )

    def median(reports: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in reports)

    def per_epoch(reports: list[dict[str, Any]]) -> float:
        return statistics.median(r["fit"] / r["epochs"] for r in reports)

    rows = [
        ("epoch, mean over the fit (s)", per_epoch(platforms), per_epoch(bares)),
        ("epoch after the first (s)", median(platforms, "steady"), median(bares, "steady")),
        ("whole process (s)", median(platforms, "wall"), median(bares, "wall")),
        (
            "peak memory (MiB)",
            median(platforms, "maxrss_kb") / 1024,
            median(bares, "maxrss_kb") / 1024,
        ),
    ]
    platform = platforms[0]
    lines = [
        f"### Training overhead: `mlflow run -e train` vs bare Keras fit ({PAIR}, "
        f"{platform['samples']} training windows, {EPOCHS} epochs, medians of {ROUNDS} "
        f"rounds, {os.cpu_count()} CPUs)",
        "",
        "| measure | platform | bare Keras | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, ours, theirs in rows:
        lines.append(f"| {label} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f}x |")
    lines += [
        "",
        "The platform's epoch includes early stopping, per-epoch MLflow logging and "
        "deterministic kernels; its whole process adds start-up, features, baselines, plots, "
        "the ONNX export and model logging once per run.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global PAIR, EPOCHS, ROWS, ROUNDS  # the options replace the module defaults
    args = sys.argv[1:] if argv is None else argv
    if args == ["--bare"]:  # the bare side's child, run by `_bare`: not an option
        print(json.dumps(bare_fit()))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.train_overhead",
        description="What the platform adds to training: `mlflow run -e train` against a bare "
        "Keras `fit` of the same model on the same arrays, each in its own process: time per "
        "epoch, the whole process and peak memory, as ratios.",
    )
    parser.add_argument(
        "--pair", default=PAIR, help="bundled pair to train on (BENCH_PAIR; default %(default)s)"
    )
    parser.add_argument(
        "--epochs", type=int, default=EPOCHS, help="epochs (BENCH_EPOCHS; default %(default)s)"
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=ROWS,
        help="newest candles to use, 0 for all (BENCH_TRAIN_ROWS; default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help="rounds of both sides, medians shown (BENCH_ROUNDS; default %(default)s)",
    )
    options = parser.parse_args(args)
    # The bare side's child reads the pair, epochs and rows from the environment at import.
    for name, value, default in (
        ("BENCH_PAIR", options.pair, PAIR),
        ("BENCH_EPOCHS", options.epochs, EPOCHS),
        ("BENCH_TRAIN_ROWS", options.rows, ROWS),
    ):
        if value != default:
            os.environ[name] = str(value)
    PAIR, EPOCHS, ROWS, ROUNDS = options.pair, options.epochs, options.rows, options.rounds
    print(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
