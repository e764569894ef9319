"""The registered model: one MLflow pyfunc that answers a DataFrame of candles, on onnxruntime.

A registered version is this `CandleModel` with the bundle's files as its artifacts (they
land in the model directory's `artifacts/` folder) and the `pipelines` package shipped whole as
`code/pipelines/` (less `__pycache__`), so `mlflow models serve -m models:/BTC-lstm@production`
and `mlflow.pyfunc.load_model(...)` work in a process that has neither this project nor
TensorFlow installed, and the model runs the same statistics as the project instead of copies.
What loading and predicting import from it needs numpy, pandas, TA-Lib and onnxruntime only:
no settings, candle store, tracking or database module.

Contract (docs/model-format.md): the input DataFrame is ONE candle history of the model's
pair, oldest first, columns `timestamp` (ISO 8601 text, or epoch milliseconds), `open`, `high`,
`low`, `close`, `volume`; the output is one row for its newest candle: `candle_time`,
`probability` (of "up", full precision), `move` (the magnitude head's probability that the
move over the horizon clears the round-trip fee, `pipelines.magnitude`; NaN for a version that
ships no magnitude head) and the service's `prediction`, `confidence`, `direction`, `signal`,
`modelType`, plus `unproven`. The signal is decided as the service decides it
(`pipelines.lifecycle.signal.served_signal`), with the thresholds and the magnitude gate
recorded in the metadata at training (`signal_rules`). A model of the `cross` feature set also
reads a `ref_close_<PAIR>` column per reference pair (the spec's `reference_pairs`): that pair's
close as of each row's time, empty (NaN) before its first candle. At least
`spec.warmup + sequence_length` candles are needed; with `spec.lookback + sequence_length` or
more the probability equals the service's exactly (the service reads that many).
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from pipelines.features.compute import CANDLE_COLUMNS, latest_features
from pipelines.features.groups.cross import reference_column
from pipelines.features.spec import reference_pairs
from pipelines.heads import HEAD_DATA_FILES, HEAD_FILE
from pipelines.lifecycle.signal import SignalRules, served_signal
from pipelines.modelbundle import (
    BASELINE_FILE,
    CALIBRATION_FILE,
    MAGNITUDE_FILE,
    METADATA_FILE,
    MODEL_FILE,
    SCALER_FILE,
    SPEC_FILE,
    BundleError,
    ModelBundle,
)
from pipelines.signals import describe_probability

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mlflow.models.model import ModelInfo

MODEL_NAME = "model"  # the logged model's name in the run
ARTIFACT_KEYS = {
    "onnx_model": MODEL_FILE,
    "scaler": SCALER_FILE,
    "feature_spec": SPEC_FILE,
    "metadata": METADATA_FILE,
    "calibration": CALIBRATION_FILE,
    "baseline": BASELINE_FILE,
    "magnitude": MAGNITUDE_FILE,
    "head": HEAD_FILE,
    **{f"head_{Path(file).stem.replace('-', '_')}": file for file in HEAD_DATA_FILES},
}
TIMESTAMP_COLUMN = "timestamp"
INPUT_COLUMNS = (TIMESTAMP_COLUMN, *CANDLE_COLUMNS)
# What ships in the model's code/ folder: this package, whole, less Python's caches.
PACKAGE = Path(__file__).resolve().parent
_NOT_SHIPPED = ("__pycache__", "*.pyc")
# Distributions the model needs at load and predict time (MLflow adds itself).
_REQUIREMENTS = (
    ("onnxruntime", "onnxruntime"),
    ("numpy", "numpy"),
    ("pandas", "pandas"),
    ("TA-Lib", "ta-lib"),
    ("cloudpickle", "cloudpickle"),
)


class CandleModel(PythonModel):
    """The pyfunc wrapper of a ModelBundle: candles in, the newest candle's prediction out."""

    def __init__(self) -> None:
        self.bundle: ModelBundle | None = None

    def load_context(self, context: PythonModelContext) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts["metadata"]).parent)

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        if self.bundle is None:
            raise BundleError("the model's artifacts are not loaded (load_context was not run)")
        try:
            return predict_newest(self.bundle, model_input)
        except ValueError as exc:  # BundleError, InvalidCandlesError: the caller's input
            # As MLflow's own error, so that `mlflow models serve` answers 400 with these words.
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc


def minimum_candles(bundle: ModelBundle) -> int:
    """The fewest candles that give one complete window: feature warm-up + sequence_length."""
    return bundle.spec.warmup + bundle.sequence_length


def exact_candles(bundle: ModelBundle) -> int:
    """Candles from which on the answer equals the service's exactly (what the service reads)."""
    return bundle.spec.lookback + bundle.sequence_length


def input_columns(bundle: ModelBundle | None) -> tuple[str, ...]:
    """The input columns a bundle reads: the candles', then its reference closes (if any)."""
    refs = () if bundle is None else reference_pairs(bundle.spec)
    return (*INPUT_COLUMNS, *(reference_column(ref) for ref in refs))


def candle_frame(model_input: pd.DataFrame, bundle: ModelBundle | None = None) -> pd.DataFrame:
    """The input's candles indexed by a UTC DatetimeIndex, as the feature code takes them
    (with the reference closes `bundle` reads)."""
    expected = input_columns(bundle)
    if not isinstance(model_input, pd.DataFrame):
        raise BundleError(
            f"the input must be a DataFrame of candles with columns {', '.join(expected)}, "
            f"got {type(model_input).__name__}"
        )
    missing = [c for c in expected if c not in model_input.columns]
    if missing:
        raise BundleError(
            f"the candles lack column(s) {', '.join(missing)}; expected {', '.join(expected)}"
        )
    stamps = model_input[TIMESTAMP_COLUMN]
    if pd.api.types.is_numeric_dtype(stamps):
        index = pd.DatetimeIndex(pd.to_datetime(stamps, unit="ms", utc=True))
    else:
        index = pd.DatetimeIndex(pd.to_datetime(stamps, utc=True, format="ISO8601"))
    frame = model_input.loc[:, list(expected[1:])].astype(np.float64)
    frame.index = index.rename(TIMESTAMP_COLUMN)
    return frame


def predict_newest(bundle: ModelBundle, model_input: pd.DataFrame) -> pd.DataFrame:
    """One row for the newest candle of `model_input`: its probability of "up" and signal, and
    the probability that its move clears the fees (`move`, NaN without a magnitude head)."""
    candles = candle_frame(model_input, bundle)
    length = bundle.sequence_length
    needed = minimum_candles(bundle)
    rows = (
        latest_features(candles, rows=length, spec=bundle.spec).to_numpy(dtype=np.float64)
        if len(candles) >= needed
        else np.empty((0, len(bundle.spec.names)))
    )
    if len(rows) < length or not np.isfinite(rows).all():
        raise BundleError(
            f"{len(candles)} candles give no complete window of {length} feature rows: at least "
            f"{needed} candles are needed ({bundle.spec.warmup} warm-up + {length} window), "
            f"{exact_candles(bundle)} for exactly the service's value"
        )
    probability = float(bundle.predict_proba(rows[np.newaxis, :, :])[0])
    moves = bundle.move_proba(rows[np.newaxis, :, :])
    move = float(moves[0]) if moves is not None else None
    rules = signal_rules(bundle.metadata)
    decided = served_signal(probability, rules=rules, unproven=not bundle.beats_baseline, move=move)
    described = describe_probability(
        probability,
        model_type=str(bundle.metadata["model_type"]),
        buy_threshold=rules.buy_threshold,
        sell_threshold=rules.sell_threshold,
        move=move,
        signal=decided.signal,
    )
    row = {
        "candle_time": candles.index[-1].isoformat(),
        "probability": probability,
        **described,
        # Full precision and NaN without a head, as `probability`: set after `described`,
        # whose own display fields come rounded.
        "move": float("nan") if move is None else move,
        "unproven": not bundle.beats_baseline,
    }
    return pd.DataFrame([row])


def signal_rules(metadata: dict[str, Any]) -> SignalRules:
    """The signal rules recorded at training: the thresholds and the magnitude gate (on at 0.5,
    `SignalRules`' defaults, for a version trained before the gate was recorded). Its other
    rules keep their defaults: an unproven version is held, and staleness is for the service,
    which knows the clock, to judge."""
    missing = [k for k in ("buy_threshold", "sell_threshold") if k not in metadata]
    if missing:
        raise BundleError(f"the model's metadata lacks {', '.join(missing)}")
    gate: dict[str, Any] = {}
    if "move_gate" in metadata:
        if not isinstance(metadata["move_gate"], bool):
            raise BundleError(
                f"the metadata's move_gate must be true or false, got {metadata['move_gate']!r}"
            )
        gate["move_gate"] = metadata["move_gate"]
    try:
        if "move_threshold" in metadata:
            gate["move_threshold"] = float(metadata["move_threshold"])
        return SignalRules(
            buy_threshold=float(metadata["buy_threshold"]),
            sell_threshold=float(metadata["sell_threshold"]),
            **gate,
        )
    except ValueError as exc:
        raise BundleError(f"the model's metadata holds invalid signal rules: {exc}") from exc


def example_candles(
    candles: pd.DataFrame, *, rows: int, bundle: ModelBundle | None = None
) -> pd.DataFrame:
    """The newest `rows` candles of a DatetimeIndex frame in the model's input shape (with the
    reference closes `bundle` reads, which `candles` must hold)."""
    tail = candles.iloc[-rows:]
    columns = list(input_columns(bundle)[1:])
    frame = tail.loc[:, columns].astype(np.float64).reset_index(drop=True)
    stamps = pd.DatetimeIndex(tail.index).tz_convert("UTC")
    frame.insert(0, TIMESTAMP_COLUMN, [s.strftime("%Y-%m-%dT%H:%M:%SZ") for s in stamps])
    # Object-typed column names: MLflow compares them with a `range` when it saves an input
    # example, which pandas 3 deprecates for its string-typed names (a warning per log).
    frame.columns = pd.Index(list(frame.columns), dtype=object)
    return frame


def serving_requirements() -> list[str]:
    """Pinned pip requirements of the pyfunc model, as installed here."""
    pins = []
    for dist, name in _REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(dist)}")
        except PackageNotFoundError as exc:
            raise BundleError(f"{dist} is not installed, so the model's pins are unknown") from exc
    return pins


def log_candle_model(directory: Path, *, candles: pd.DataFrame) -> ModelInfo:
    """Log the bundle in `directory` as the active run's pyfunc model `model`.

    Args:
        directory: a ModelBundle directory (`ModelBundle.save` writes every file it holds).
        candles: real candles (DatetimeIndex, oldest first); the newest of them are the input
            example, and the signature is inferred from them and the model's answer.
    """
    from mlflow.models import infer_signature

    bundle = ModelBundle.load(directory)
    example = example_candles(candles, rows=min(len(candles), exact_candles(bundle)), bundle=bundle)
    signature = infer_signature(example, predict_newest(bundle, example))
    with _staged_code() as code:
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=CandleModel(),
            artifacts={
                key: str(directory / file)
                for key, file in ARTIFACT_KEYS.items()
                if (directory / file).is_file()
            },
            code_paths=[str(code)],
            signature=signature,
            input_example=example,
            # Given, so that MLflow does not spawn a process to infer them.
            pip_requirements=serving_requirements(),
        )


@contextmanager
def _staged_code() -> Iterator[Path]:
    """A temporary copy of the `pipelines` package, less `__pycache__` and `.pyc` files."""
    with tempfile.TemporaryDirectory(prefix="tbml-code-") as tmp:
        target = Path(tmp) / PACKAGE.name
        shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns(*_NOT_SHIPPED))
        yield target
