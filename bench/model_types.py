"""Model types side by side: training time, served latency, and LightGBM's runtime.

Self-contained: a temporary tracking store and data folder, the bundled candles. Three parts:

- training: every model type (`pipelines.settings.MODEL_TYPES` by default) trained on the same
  pair and newest candles through the real `mlproject.train.train` (verdict, refit,
  registration, promotion) into the temporary store, one after the other in this process; the
  wall seconds of each `train()` call, the ratio to the peer's (the LSTM), and the number of
  walk-forward folds its verdict used (its run's `verdict_folds` parameter). TensorFlow is
  imported and the store created before the first clock starts.
- served latency: the promoted versions loaded by the service's own `ModelCache` and asked
  through its `Predictor` (no HTTP): cold is `ModelBundle.load` of the version's bundle folder
  plus its first `predict_proba` on one window (a fresh object each time; onnxruntime and
  LightGBM already imported, their import cost is in the third part); uncached is
  `Predictor.predict_candles` on the pair's candles, which computes the newest window's
  features and predicts without reading or filling a cache; cached is `Predictor.answer_now`,
  the event loop's answer from the prediction cache. Median and p95 of repeats, ratio to the
  peer's median.
- LightGBM's runtime: one booster (the project's booster parameters, 7 leaves, a fixed number of
  rounds) on the pair's scaled last-step features, asked by LightGBM's own runtime (what the
  service's `lightgbm` head uses, `Booster.predict(num_threads=1)`) and by onnxruntime after
  `onnxmltools.convert_lightgbm` (one intra-op thread): one row, 1,000 rows, the largest
  probability difference over the test rows, file sizes, load time, and the cost of importing
  each runtime in a fresh interpreter that has already imported the service (`service.app`).

Run alone with `python -m bench.model_types` (`--help` for the options; `--full` for every
candle, more epochs and more repeats).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.settings import MODEL_TYPES, PROJECT_ROOT, Settings

PAIR = "BTC"
PEER = "lstm"
MAX_ROWS = 3000
EPOCHS = 5
SEQUENCE_LENGTH = 60
TREES = 300
BATCH_ROWS = 1000
# Repeats of each latency: cold, uncached, cached; and of each runtime import.
QUICK_REPEATS = (10, 100, 1000)
FULL_REPEATS = (30, 500, 5000)
IMPORT_ROUNDS = 3
FULL_EPOCHS = 20  # --full: every candle, these epochs, FULL_REPEATS

# In a fresh interpreter that has imported the service's app (what a serving process holds
# before its first model loads): what importing one runtime adds, seconds and MiB of RSS.
_IMPORT = (
    "import json, sys, time, psutil, service.app; "
    "rss = psutil.Process().memory_info().rss; t = time.perf_counter(); "
    "__import__(sys.argv[1]); "
    "print(json.dumps({'s': time.perf_counter() - t, "
    "'mib': (psutil.Process().memory_info().rss - rss) / 2**20}))"
)


@dataclass(frozen=True)
class Trained:
    """One training: how long `train()` took and what became of the model."""

    model_type: str
    seconds: float
    verdict_folds: int
    version: str | None
    promotion: str


@dataclass(frozen=True)
class Spread:
    """Median and 95th percentile of repeated timings, milliseconds."""

    median_ms: float
    p95_ms: float
    repeats: int

    @classmethod
    def of(cls, seconds: list[float]) -> Spread:
        ms = np.asarray(seconds) * 1000
        return cls(float(np.median(ms)), float(np.percentile(ms, 95)), len(ms))


@dataclass(frozen=True)
class Served:
    """Served latency of one model type's production version."""

    model_type: str
    version: str
    probability: float
    cold: Spread
    uncached: Spread
    cached: Spread


@dataclass(frozen=True)
class Runtime:
    """One runtime asked the same booster."""

    name: str
    single: Spread
    batch: Spread
    file_bytes: int
    load_ms: float
    import_s: float
    import_mib: float


@dataclass(frozen=True)
class Runtimes:
    """LightGBM's own runtime against onnxruntime; `onnx` is None when conversion failed."""

    features: int
    trees: int
    leaves: int
    test_rows: int
    lightgbm: Runtime
    onnx: Runtime | None
    max_abs_diff: float | None
    failure: str | None = None


def _clock(call: Callable[[], object], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def bench_settings(root: Path) -> Settings:
    """Settings (no `.env`) with a fresh data folder and SQLite tracking store under `root`."""
    return Settings(
        _env_file=None,
        data_dir=root / "data",
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=root / "mlruns",
    )


# --- training -----------------------------------------------------------------------------------


def train_types(
    settings: Settings,
    *,
    types: tuple[str, ...],
    pair: str,
    max_rows: int,
    epochs: int,
    sequence_length: int,
) -> list[Trained]:
    """Train, register and promote each model type in turn; wall seconds of each `train()`."""
    import keras  # noqa: F401  (imported before the clock: the first network must not pay it)
    from mlflow import MlflowClient

    from mlproject.config import TrainConfig
    from mlproject.train import train

    client = MlflowClient(settings.tracking_uri)
    client.search_experiments()  # creates the SQLite store before the clock
    trained = []
    for model_type in types:
        config = TrainConfig.from_settings(
            settings,
            pair=pair,
            model_type=model_type,
            epochs=epochs,
            max_rows=max_rows,
            sequence_length=sequence_length,
        )
        started = time.perf_counter()
        outcome = train(config, settings=settings)
        seconds = time.perf_counter() - started
        params = client.get_run(outcome.run_id).data.params
        trained.append(
            Trained(
                model_type=model_type,
                seconds=seconds,
                verdict_folds=int(params["verdict_folds"]),
                version=outcome.version,
                promotion=outcome.promotion,
            )
        )
    return trained


# --- served latency -----------------------------------------------------------------------------


def served_latency(
    settings: Settings,
    *,
    pair: str,
    types: tuple[str, ...],
    root: Path,
    repeats: tuple[int, int, int] = QUICK_REPEATS,
) -> list[Served]:
    """Cold, uncached and cached latency of each type's production version (see the module's
    docstring); a type whose slot has no production version is left out."""
    from pipelines.candles.store import CandleStore
    from pipelines.features.compute import latest_features
    from pipelines.features.references import store_loader, with_references
    from pipelines.modelbundle import ModelBundle
    from service.caches import TTLCache
    from service.model_cache import ModelCache
    from service.predictor import Predictor

    cold_n, uncached_n, cached_n = repeats
    models = ModelCache(
        tracking_uri=settings.tracking_uri,
        cache_dir=root / "model-cache",
        slots=[(pair, t) for t in types],
    )
    models.refresh()
    store = CandleStore.from_settings(settings)
    predictor = Predictor(
        settings=settings,
        store=store,
        models=models,
        prediction_cache=TTLCache(name="predictions", ttl_ms=settings.prediction_cache_ttl_ms),
        feature_cache=TTLCache(name="features", ttl_ms=settings.feature_cache_ttl_ms),
    )
    candles = store.load(pair, settings.timeframe)
    out = []
    for model_type in types:
        served = models.get(pair, model_type)
        if served is None:
            continue
        directory = served.bundle.directory
        attached = with_references(
            candles,
            pair=pair,
            spec=served.bundle.spec,
            load=store_loader(store, settings.timeframe),
        )
        rows = latest_features(
            attached, rows=served.bundle.sequence_length, spec=served.bundle.spec
        ).to_numpy(dtype=np.float64)
        window = rows[np.newaxis, :, :]

        def cold(directory: Path = directory, window: np.ndarray = window) -> None:
            ModelBundle.load(directory).predict_proba(window)

        def uncached(model_type: str = model_type) -> dict[str, Any]:
            return predictor.predict_candles(
                pair=pair, model_type=model_type, ensemble=False, candles=candles
            )

        def cached(model_type: str = model_type) -> dict[str, Any] | None:
            return predictor.answer_now(pair=pair, model_type=model_type, ensemble=False)

        body = uncached()
        if body["fallback"] or body["modelVersion"] != served.version:
            raise RuntimeError(f"{model_type}: the service did not serve its version: {body}")
        predictor.predict(pair=pair, model_type=model_type, ensemble=False)  # fills the cache
        hit = cached()
        if hit is None or not hit["cached"]:
            raise RuntimeError(f"{model_type}: no cached answer after a prediction: {hit}")
        out.append(
            Served(
                model_type=model_type,
                version=served.version,
                probability=float(body["prediction"]["prediction"]),
                cold=Spread.of(_clock(cold, cold_n)),
                uncached=Spread.of(_clock(uncached, uncached_n)),
                cached=Spread.of(_clock(cached, cached_n)),
            )
        )
    return out


# --- LightGBM's runtime -------------------------------------------------------------------------


def _import_cost(module: str, rounds: int) -> tuple[float, float]:
    """Median seconds and MiB of importing `module` in a fresh interpreter."""
    seconds, mib = [], []
    for _ in range(rounds):
        result = subprocess.run(
            [sys.executable, "-c", _IMPORT, module],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"import {module} failed:\n{result.stderr[-2000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        seconds.append(report["s"])
        mib.append(report["mib"])
    return statistics.median(seconds), statistics.median(mib)


def lightgbm_runtimes(
    settings: Settings,
    *,
    pair: str,
    trees: int = TREES,
    repeats: int = QUICK_REPEATS[2],
    import_rounds: int = IMPORT_ROUNDS,
) -> Runtimes:
    """The same booster asked by LightGBM and by onnxruntime (see the module's docstring)."""
    import lightgbm

    from mlproject.config import TrainConfig
    from mlproject.data import fit_scaler, time_split
    from mlproject.loading import load_dataset
    from mlproject.tabular import BOOSTER_PARAMS, fit_booster, part

    config = TrainConfig.from_settings(settings, pair=pair, model_type="lightgbm")
    dataset = load_dataset(config, settings=settings)
    split = time_split(
        dataset, val_fraction=settings.validation_fraction, test_fraction=settings.test_fraction
    )
    scaler = fit_scaler(dataset, split)
    train, test = part(dataset, scaler, split.train), part(dataset, scaler, split.test)
    booster, _ = fit_booster(train.rows, train.y, seed=config.seed, rounds=trees)
    text = booster.model_to_string()
    x = np.ascontiguousarray(test.rows, dtype=np.float64)
    batch = x[:BATCH_ROWS]
    one = x[-1:]

    def own(rows: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(rows, num_threads=1), dtype=np.float64)

    started = time.perf_counter()
    lightgbm.Booster(model_str=text)
    own_load = (time.perf_counter() - started) * 1000
    own(one)
    own_import = _import_cost("lightgbm", import_rounds)
    native = Runtime(
        name=f"LightGBM {lightgbm.__version__} (`Booster.predict`, 1 thread)",
        single=Spread.of(_clock(lambda: own(one), repeats)),
        batch=Spread.of(_clock(lambda: own(batch), max(10, repeats // 20))),
        file_bytes=len(text.encode()),
        load_ms=own_load,
        import_s=own_import[0],
        import_mib=own_import[1],
    )
    figures: dict[str, Any] = {
        "features": x.shape[1],
        "trees": booster.num_trees(),
        "leaves": int(BOOSTER_PARAMS["num_leaves"]),
        "test_rows": len(x),
        "lightgbm": native,
    }
    try:
        import onnxmltools  # type: ignore[import-untyped]
        import onnxruntime as ort
        from onnxmltools.convert.common.data_types import (  # type: ignore[import-untyped]
            FloatTensorType,
        )

        model = onnxmltools.convert_lightgbm(
            booster,
            initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
            zipmap=False,
        )
        data = model.SerializeToString()
    except Exception as exc:  # the figure to report is why it failed
        return Runtimes(**figures, onnx=None, max_abs_diff=None, failure=f"{exc!r}"[:300])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    started = time.perf_counter()
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    onnx_load = (time.perf_counter() - started) * 1000
    name = session.get_inputs()[0].name
    (probabilities,) = (o.name for o in session.get_outputs() if o.name == "probabilities")

    def onnx(rows: np.ndarray) -> np.ndarray:
        out = session.run([probabilities], {name: rows.astype(np.float32)})[0]
        return np.asarray(out, dtype=np.float64)[:, 1]

    onnx(one)
    onnx_import = _import_cost("onnxruntime", import_rounds)
    converted = Runtime(
        name=f"onnxruntime {ort.__version__} (onnxmltools {onnxmltools.__version__}, 1 thread)",
        single=Spread.of(_clock(lambda: onnx(one), repeats)),
        batch=Spread.of(_clock(lambda: onnx(batch), max(10, repeats // 20))),
        file_bytes=len(data),
        load_ms=onnx_load,
        import_s=onnx_import[0],
        import_mib=onnx_import[1],
    )
    diff = float(np.max(np.abs(own(x) - onnx(x))))
    return Runtimes(**figures, onnx=converted, max_abs_diff=diff)


# --- the report ---------------------------------------------------------------------------------


def _ratio(value: float, peer: float | None) -> str:
    return f"{value / peer:.2f}x" if peer else "n/a"


def training_table(trained: list[Trained], *, peer: str, title: str) -> str:
    base = next((t.seconds for t in trained if t.model_type == peer), None)
    lines = [
        title,
        "",
        f"| model type | train() s | / {peer} | verdict folds | version | promotion |",
        "|---|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {t.model_type} | {t.seconds:.1f} | {_ratio(t.seconds, base)} | {t.verdict_folds} "
        f"| {t.version or '-'} | {t.promotion} |"
        for t in trained
    ]
    return "\n".join(lines)


def latency_table(served: list[Served], *, peer: str, title: str) -> str:
    base = next((s for s in served if s.model_type == peer), None)
    lines = [
        title,
        "",
        "| model type | cold p50 ms | cold p95 | cold / "
        f"{peer} | uncached p50 ms | uncached p95 | uncached / {peer} | cached p50 ms "
        f"| cached p95 | cached / {peer} | p(up) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in served:
        cells = []
        for kind in ("cold", "uncached", "cached"):
            spread: Spread = getattr(s, kind)
            peer_ms = getattr(base, kind).median_ms if base is not None else None
            ratio = _ratio(spread.median_ms, peer_ms)
            cells.append(f"{spread.median_ms:.3f} | {spread.p95_ms:.3f} | {ratio}")
        lines.append(f"| {s.model_type} | {' | '.join(cells)} | {s.probability:.4f} |")
    if served:
        first = served[0]
        lines += [
            "",
            f"Repeats: cold {first.cold.repeats}, uncached {first.uncached.repeats}, cached "
            f"{first.cached.repeats}.",
        ]
    return "\n".join(lines)


def runtime_table(figures: Runtimes) -> str:
    title = (
        f"### LightGBM's runtime: one booster ({figures.trees} trees, {figures.leaves} leaves, "
        f"{figures.features} features), LightGBM against ONNX"
    )
    lines = [title, ""]
    if figures.onnx is None:
        lines.append(f"The conversion to ONNX failed: {figures.failure}")
    runtimes = [figures.lightgbm] + ([figures.onnx] if figures.onnx is not None else [])
    lines += [
        "| runtime | 1 row p50 ms | 1 row p95 | "
        f"{BATCH_ROWS:,} rows p50 ms | {BATCH_ROWS:,} rows p95 | model file KiB | load ms "
        "| import s | import MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.name} | {r.single.median_ms:.4f} | {r.single.p95_ms:.4f} | "
        f"{r.batch.median_ms:.3f} | {r.batch.p95_ms:.3f} | {r.file_bytes / 1024:,.0f} | "
        f"{r.load_ms:.1f} | {r.import_s:.2f} | {r.import_mib:.0f} |"
        for r in runtimes
    ]
    if figures.onnx is not None and figures.max_abs_diff is not None:
        own, onnx = figures.lightgbm, figures.onnx
        lines += [
            "",
            f"- ONNX / LightGBM: 1 row {_ratio(onnx.single.median_ms, own.single.median_ms)}, "
            f"{BATCH_ROWS:,} rows {_ratio(onnx.batch.median_ms, own.batch.median_ms)}, file "
            f"{_ratio(onnx.file_bytes, own.file_bytes)}, import "
            f"{_ratio(onnx.import_s, own.import_s)}.",
            f"- Largest |p(LightGBM) - p(ONNX)| over {figures.test_rows:,} test rows: "
            f"{figures.max_abs_diff:.2e} (ONNX reads float32 inputs).",
        ]
    return "\n".join(lines)


def run(
    *,
    pair: str = PAIR,
    types: tuple[str, ...] = MODEL_TYPES,
    max_rows: int = MAX_ROWS,
    epochs: int = EPOCHS,
    sequence_length: int = SEQUENCE_LENGTH,
    repeats: tuple[int, int, int] = QUICK_REPEATS,
    trees: int = TREES,
    runtimes: bool = True,
    command: str = "python -m bench.model_types",
) -> str:
    """Train every type, measure it served, compare LightGBM's runtimes; the markdown tables."""
    if PEER not in types:
        types = (PEER, *types)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-types-") as tmp:
        root = Path(tmp)
        settings = bench_settings(root)
        trained = train_types(
            settings,
            types=types,
            pair=pair,
            max_rows=max_rows,
            epochs=epochs,
            sequence_length=sequence_length,
        )
        served = served_latency(settings, pair=pair, types=types, root=root, repeats=repeats)
        figures = (
            lightgbm_runtimes(settings, pair=pair, trees=trees, repeats=repeats[2])
            if runtimes
            else None
        )
    rows = f"newest {max_rows:,} candles" if max_rows else "every candle"
    parts = [
        training_table(
            trained,
            peer=PEER,
            title=f"### Training time by model type: {pair}, {rows}, sequence length "
            f"{sequence_length}, networks at most {epochs} epochs, through `train()`",
        ),
        latency_table(
            served,
            peer=PEER,
            title=f"### Served latency by model type: {pair}, the service's `Predictor` "
            "in-process (no HTTP)",
        ),
    ]
    if figures is not None:
        parts.append(runtime_table(figures))
    parts.append(
        f"_`{command}`; {os.cpu_count()} CPUs, load average {load:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after._"
    )
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.model_types",
        description="Training time and served latency of each model type against the LSTM, "
        "and LightGBM's own runtime against ONNX for the same booster.",
    )
    parser.add_argument("--pair", default=PAIR, help="bundled pair to train on")
    parser.add_argument(
        "--types",
        default=",".join(MODEL_TYPES),
        help=f"comma-separated model types ({PEER} is always added as the peer)",
    )
    parser.add_argument(
        "--max-rows", type=int, default=None, help=f"newest candles, 0 all (default {MAX_ROWS})"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"networks' maximum epochs (default {EPOCHS})"
    )
    parser.add_argument("--sequence-length", type=int, default=SEQUENCE_LENGTH)
    parser.add_argument("--trees", type=int, default=TREES, help="rounds of the runtime booster")
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"every candle, {FULL_EPOCHS} epochs, repeats {FULL_REPEATS} (cold, uncached, cached)",
    )
    parser.add_argument(
        "--no-runtimes", action="store_true", help="skip LightGBM's runtime comparison"
    )
    args = parser.parse_args(argv)
    types = tuple(t.strip().lower() for t in args.types.split(",") if t.strip())
    unknown = [t for t in types if t not in MODEL_TYPES]
    if unknown:
        parser.error(f"unknown model types {unknown}: allowed are {', '.join(MODEL_TYPES)}")
    max_rows = args.max_rows if args.max_rows is not None else (0 if args.full else MAX_ROWS)
    epochs = args.epochs if args.epochs is not None else (FULL_EPOCHS if args.full else EPOCHS)
    command = "python -m bench.model_types" + " ".join(["", *(argv or sys.argv[1:])]).rstrip()
    logging.basicConfig(level=logging.WARNING)
    print(
        run(
            pair=args.pair.upper(),
            types=types,
            max_rows=max_rows,
            epochs=epochs,
            sequence_length=args.sequence_length,
            repeats=FULL_REPEATS if args.full else QUICK_REPEATS,
            trees=args.trees,
            runtimes=not args.no_runtimes,
            command=command,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
