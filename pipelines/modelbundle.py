"""The serving bundle: everything needed to predict with a registered version, and no TensorFlow.

A training run writes one bundle directory and logs its files as the artifacts of the run's
pyfunc model (`pipelines.pyfunc_model`), which is what a registered version is: the files sit
in the logged model's `artifacts/` folder, so `download_bundle(client, name=..., version=...)`
fetches them for the service (and for the promotion gate, which scores the production version
through its bundle). Layout:

    model.onnx          a network: the Keras model exported to ONNX (same outputs within 1e-5)
    head.json           the other model types (`pipelines.heads`): the head and the files it
                        reads (`lightgbm.txt`, ...); a bundle holds model.onnx or head.json
    scaler.json         the FeatureScaler fitted on the training rows
    feature_spec.json   the FeatureSpec the model was trained on
    metadata.json       pair, model type, sequence_length, horizon, data range, test window,
                        test and baseline metrics, beats_baseline, feature-set version
    calibration.json    the Calibrator applied after the ONNX output (`pipelines.calibration`);
                        a bundle saved before calibration existed has none and loads as the
                        identity (method none), so it predicts what it always did
    baseline.json       the logistic baseline of the training (`LogisticBaseline`): feature
                        names, coefficients and intercept of a logistic regression on the
                        scaled features of each window's last step; optional (older versions
                        have none), scored in shadow beside every live prediction
    magnitude.json      the magnitude head (`pipelines.magnitude.MagnitudeHead`): P(the move over
                        the horizon clears the round-trip fee), a logistic regression on a HAR
                        inside each raw window and a few scaled last-step features; optional
                        (older versions have none, or a head on the scaled last step alone)

Registered model names are `pipelines.tracking.registered_model_name(pair, model_type)`:
`{PAIR}-{model_type}`, e.g. `BTC-lstm`, one registered model per pair and architecture.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.calibration import CalibrationError, Calibrator
from pipelines.features.scaler import FeatureScaler
from pipelines.features.spec import FeatureSpec
from pipelines.features.windows import make_windows
from pipelines.heads import HEAD_DATA_FILES, HEAD_FILE, Head, HeadError, load_head, save_head
from pipelines.magnitude import MagnitudeHead

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Where a pyfunc model keeps its `artifacts=` (MLflow's layout): the bundle's files.
PYFUNC_ARTIFACTS_DIR = "artifacts"
MODEL_FILE = "model.onnx"
SCALER_FILE = "scaler.json"
SPEC_FILE = "feature_spec.json"
METADATA_FILE = "metadata.json"
CALIBRATION_FILE = "calibration.json"
BASELINE_FILE = "baseline.json"
MAGNITUDE_FILE = "magnitude.json"
# Every file a bundle may hold; all but the optional ones must be there, and one of the model
# files (MODEL_FILE for a network, HEAD_FILE for the other types).
REQUIRED_FILES = (SCALER_FILE, SPEC_FILE, METADATA_FILE)
MODEL_FILES = (MODEL_FILE, HEAD_FILE)
OPTIONAL_FILES = (
    MODEL_FILE,
    HEAD_FILE,
    *HEAD_DATA_FILES,
    CALIBRATION_FILE,
    BASELINE_FILE,
    MAGNITUDE_FILE,
)
BUNDLE_FILES = (*REQUIRED_FILES, *OPTIONAL_FILES)


class BundleError(ValueError):
    """A bundle directory is incomplete or inconsistent; the message names the problem."""


@dataclass(frozen=True, eq=False)
class LogisticBaseline:
    """A logistic regression on the scaled features of a window's last step.

    p(up) = 1 / (1 + exp(-(coef . z + intercept))), z the last step's features scaled with the
    bundle's scaler (as the training fitted it).
    """

    names: tuple[str, ...]
    coef: np.ndarray
    intercept: float

    def __post_init__(self) -> None:
        coef = np.asarray(self.coef, dtype=np.float64).reshape(-1)
        if coef.size != len(self.names):
            raise BundleError(
                f"the logistic baseline has {coef.size} coefficients for {len(self.names)} features"
            )
        if not np.isfinite(coef).all() or not math.isfinite(self.intercept):
            raise BundleError("the logistic baseline's coefficients must be finite numbers")
        object.__setattr__(self, "coef", coef)

    def proba(self, scaled_rows: np.ndarray) -> np.ndarray:
        """p(up) of each scaled feature row (n, n_features)."""
        logit = np.asarray(scaled_rows, dtype=np.float64) @ self.coef + self.intercept
        return 0.5 * (1.0 + np.tanh(0.5 * logit))  # the logistic function, without overflow

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "logistic",
            "names": list(self.names),
            "coef": [float(c) for c in self.coef],
            "intercept": float(self.intercept),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogisticBaseline:
        if data.get("kind") != "logistic":
            raise BundleError(f"unknown baseline kind {data.get('kind')!r}: expected 'logistic'")
        return cls(
            names=tuple(str(n) for n in data["names"]),
            coef=np.asarray(data["coef"], dtype=np.float64),
            intercept=float(data["intercept"]),
        )


@dataclass
class ModelBundle:
    """A model with the scaler, feature spec, metadata and calibrator it was trained with.

    A network's model is the ONNX file at `onnx_path`; another type's is its `head`
    (`pipelines.heads`), and `onnx_path` is then the bundle's `head.json`.
    """

    onnx_path: Path
    scaler: FeatureScaler
    spec: FeatureSpec
    metadata: dict[str, Any]
    calibrator: Calibrator = field(default_factory=Calibrator)
    baseline: LogisticBaseline | None = None
    head: Head | None = None
    magnitude: MagnitudeHead | None = None
    _session: Any = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def sequence_length(self) -> int:
        return int(self.metadata["sequence_length"])

    @property
    def horizon(self) -> int:
        return int(self.metadata["horizon"])

    @property
    def directory(self) -> Path:
        """The folder of the bundle's files."""
        return self.onnx_path.parent

    @property
    def beats_baseline(self) -> bool:
        return bool(self.metadata.get("beats_baseline", False))

    def save(self, directory: Path) -> Path:
        """Write the bundle's files into `directory` (created if needed), calibration included."""
        directory.mkdir(parents=True, exist_ok=True)
        if self.head is not None:
            save_head(self.head, directory)
        else:
            target = directory / MODEL_FILE
            if self.onnx_path.resolve() != target.resolve():
                shutil.copyfile(self.onnx_path, target)
        self.scaler.save(directory / SCALER_FILE)
        self.spec.save(directory / SPEC_FILE)
        text = json.dumps(
            _strict(self.metadata), indent=2, sort_keys=True, default=_json_default, allow_nan=False
        )
        (directory / METADATA_FILE).write_text(text + "\n")
        calibration = json.dumps(self.calibrator.to_dict(), indent=2, allow_nan=False)
        (directory / CALIBRATION_FILE).write_text(calibration + "\n")
        if self.baseline is not None:
            text = json.dumps(self.baseline.to_dict(), indent=2, allow_nan=False)
            (directory / BASELINE_FILE).write_text(text + "\n")
        if self.magnitude is not None:
            text = json.dumps(self.magnitude.to_dict(), indent=2, allow_nan=False)
            (directory / MAGNITUDE_FILE).write_text(text + "\n")
        return directory

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        """Read a bundle directory; the ONNX session is opened on the first prediction."""
        missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
        if not any((directory / name).is_file() for name in MODEL_FILES):
            missing.append(f"a model ({' or '.join(MODEL_FILES)})")
        if missing:
            raise BundleError(f"bundle {directory} lacks {', '.join(missing)}")
        scaler = FeatureScaler.load(directory / SCALER_FILE)
        spec = FeatureSpec.load(directory / SPEC_FILE)
        metadata = json.loads((directory / METADATA_FILE).read_text())
        if scaler.names != spec.names:
            raise BundleError(f"bundle {directory}: the scaler's features differ from the spec's")
        for key in ("sequence_length", "horizon", "pair", "model_type"):
            if key not in metadata:
                raise BundleError(f"bundle {directory}: metadata lacks {key!r}")
        head = None
        if (directory / HEAD_FILE).is_file():
            try:
                head = load_head(directory)
            except HeadError as exc:
                raise BundleError(f"bundle {directory}: {HEAD_FILE} is invalid: {exc}") from exc
        return cls(
            onnx_path=directory / (HEAD_FILE if head is not None else MODEL_FILE),
            head=head,
            scaler=scaler,
            spec=spec,
            metadata=metadata,
            calibrator=_load_calibrator(directory),
            baseline=_load_baseline(directory, names=spec.names),
            magnitude=_load_magnitude(
                directory,
                names=spec.names,
                horizon=int(metadata["horizon"]),
                sequence_length=int(metadata["sequence_length"]),
            ),
        )

    def windows(self, features: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Raw (unscaled) windows of every complete `sequence_length` run of feature rows.

        A DataFrame is reordered to the spec's columns (missing ones are an error).
        """
        if isinstance(features, pd.DataFrame):
            missing = [n for n in self.spec.names if n not in features.columns]
            if missing:
                raise BundleError(f"features lack {len(missing)} columns: {missing[:5]}")
            matrix = features.loc[:, list(self.spec.names)].to_numpy(dtype=np.float64)
        else:
            matrix = np.asarray(features, dtype=np.float64)
        return make_windows(matrix, sequence_length=self.sequence_length)

    def predict_proba(
        self, windows: np.ndarray, *, scaled: bool = False, calibrated: bool = True
    ) -> np.ndarray:
        """Probability of "up" for each window: the ONNX output through the calibrator.

        Args:
            windows: (n, sequence_length, n_features) feature windows, raw as
                `compute_features` gives them (the bundle scales them), or already scaled
                with this bundle's scaler when `scaled` is True.
            scaled: whether `windows` are already scaled.
            calibrated: False for the ONNX model's own output (what the export check
                compares with Keras); what is served is calibrated.

        Returns:
            (n,) float64 probabilities.
        """
        data = np.asarray(windows)
        expected = (self.sequence_length, len(self.spec.names))
        if data.ndim != 3 or data.shape[1:] != expected:
            raise BundleError(
                f"expected windows of shape (n, {expected[0]}, {expected[1]}), got {data.shape}"
            )
        inputs = data.astype(np.float32) if scaled else self.scaler.transform(data)
        if self.head is not None:
            raw = self.head.proba(inputs)
            return self.calibrator.apply(raw) if calibrated else raw
        session = self._get_session()
        name = session.get_inputs()[0].name
        out = session.run(None, {name: np.ascontiguousarray(inputs, dtype=np.float32)})[0]
        raw = np.asarray(out, dtype=np.float64).reshape(-1)
        return self.calibrator.apply(raw) if calibrated else raw

    def baseline_proba(self, windows: np.ndarray) -> np.ndarray | None:
        """The shipped logistic baseline's p(up) for each raw window (n, sequence_length,
        n_features): the last step, scaled with the bundle's scaler. None without a baseline."""
        if self.baseline is None:
            return None
        return self.baseline.proba(self.scaler.transform(self._checked(windows)[:, -1, :]))

    def move_proba(self, windows: np.ndarray) -> np.ndarray | None:
        """The magnitude head's P(the move over the horizon clears its threshold) for each raw
        window (n, sequence_length, n_features): its inputs come from the raw window and from
        the last step scaled with the bundle's scaler. None for a bundle without a magnitude
        head."""
        if self.magnitude is None:
            return None
        data = self._checked(windows)
        return self.magnitude.proba(data, self.scaler.transform(data[:, -1, :]))

    def _checked(self, windows: np.ndarray) -> np.ndarray:
        """Raw windows of the bundle's shape (n, sequence_length, n_features)."""
        data = np.asarray(windows)
        expected = (self.sequence_length, len(self.spec.names))
        if data.ndim != 3 or data.shape[1:] != expected:
            raise BundleError(
                f"expected windows of shape (n, {expected[0]}, {expected[1]}), got {data.shape}"
            )
        return data

    def _get_session(self) -> Any:
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                self._session = ort.InferenceSession(
                    str(self.onnx_path), providers=["CPUExecutionProvider"]
                )
            return self._session


def download_bundle(
    client: MlflowClient, *, name: str, version: str | int, dst: Path
) -> ModelBundle:
    """Fetch and load the bundle of registered version `version` of `name` into `dst`.

    The version's source is its logged model (`models:/m-<id>`); the bundle is that model's
    `artifacts/` folder.
    """
    from mlflow.artifacts import download_artifacts

    model_version = client.get_model_version(name, str(version))
    model_id = logged_model_id(model_version.source, getattr(model_version, "model_id", None))
    if model_id is None:
        raise BundleError(
            f"{name} version {version} comes from {model_version.source!r}, not from a logged "
            "pyfunc model (models:/m-...), so it has no bundle"
        )
    location = client.get_logged_model(model_id).artifact_location.rstrip("/")
    dst.mkdir(parents=True, exist_ok=True)
    local = download_artifacts(
        artifact_uri=f"{location}/{PYFUNC_ARTIFACTS_DIR}",
        dst_path=str(dst),
        tracking_uri=client.tracking_uri,
    )
    return ModelBundle.load(Path(local))


def logged_model_id(source: str | None, model_id: str | None = None) -> str | None:
    """The logged model id of a version: its `model_id`, or parsed from `models:/m-<id>`."""
    if model_id:
        return model_id
    prefix = "models:/"
    if source and source.startswith(prefix):
        rest = source[len(prefix) :].strip("/")
        if rest.startswith("m-") and "/" not in rest:
            return rest
    return None


def _load_calibrator(directory: Path) -> Calibrator:
    """The bundle's calibrator; the identity for a bundle saved before calibration existed."""
    path = directory / CALIBRATION_FILE
    if not path.is_file():
        return Calibrator()
    try:
        return Calibrator.from_dict(json.loads(path.read_text()))
    except (CalibrationError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {directory}: {CALIBRATION_FILE} is invalid: {exc}") from exc


def _load_baseline(directory: Path, *, names: tuple[str, ...]) -> LogisticBaseline | None:
    """The bundle's logistic baseline; None for a bundle saved before baselines shipped."""
    path = directory / BASELINE_FILE
    if not path.is_file():
        return None
    try:
        baseline = LogisticBaseline.from_dict(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError) as exc:  # BundleError and JSONDecodeError too
        raise BundleError(f"bundle {directory}: {BASELINE_FILE} is invalid: {exc}") from exc
    if baseline.names != names:
        raise BundleError(f"bundle {directory}: the baseline's features differ from the spec's")
    return baseline


def _load_magnitude(
    directory: Path, *, names: tuple[str, ...], horizon: int, sequence_length: int
) -> MagnitudeHead | None:
    """The bundle's magnitude head; None for a bundle saved before magnitude heads shipped.
    Its features must be the spec's, its horizon the metadata's, and its spans must fit in a
    window."""
    path = directory / MAGNITUDE_FILE
    if not path.is_file():
        return None
    try:
        head = MagnitudeHead.from_dict(json.loads(path.read_text()))
    except ValueError as exc:  # MagnitudeError and JSONDecodeError
        raise BundleError(f"bundle {directory}: {MAGNITUDE_FILE} is invalid: {exc}") from exc
    if head.names != names:
        raise BundleError(
            f"bundle {directory}: the features of {MAGNITUDE_FILE} differ from the spec's"
        )
    if head.horizon != horizon:
        raise BundleError(
            f"bundle {directory}: {MAGNITUDE_FILE} forecasts {head.horizon} candles ahead, the "
            f"bundle's horizon is {horizon}"
        )
    if head.window_length > sequence_length:
        raise BundleError(
            f"bundle {directory}: {MAGNITUDE_FILE} reads {head.window_length} steps of each "
            f"window, the bundle's windows hold {sequence_length}"
        )
    return head


def _strict(value: Any) -> Any:
    """NaN as null, so the metadata is strict JSON that any client parses."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return str(pd.Timestamp(value).isoformat())
    raise TypeError(f"cannot store {type(value).__name__} in bundle metadata")
