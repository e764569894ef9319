"""What turns a bundle's scaled windows into p(up) for the model types that are not networks.

A network's bundle holds `model.onnx`; the other model types (`pipelines.settings.TABULAR_TYPES`)
hold `head.json`, which describes a head and names any file it reads:

- `logistic`: coefficients and intercept over the last `lags` steps' features.
- `lightgbm`: a LightGBM booster converted to ONNX (`lightgbm.onnx`, run by onnxruntime like
  a network: measured against LightGBM's own runtime, it answers the same probabilities within
  3e-7, a batch in a third of the time, and spares the service importing LightGBM, SciPy and
  scikit-learn, 2.4 s and 80 MiB; docs/benchmarks.md) over the last `lags` steps' features,
  plus a categorical pair column when it was trained on several pairs (`pair_index`).
- `blend`: a weighted mean of member heads' probabilities (weights chosen on validation rows).

Every head reads (n, sequence_length, n_features) windows scaled with the bundle's scaler and
returns (n,) float64 probabilities before calibration, like the ONNX model does.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

HEAD_FILE = "head.json"
LIGHTGBM_FILE = "lightgbm.onnx"
POOLED_FILE = "lightgbm-pooled.onnx"  # a pooled booster beside a pair's own in one blend
PROBABILITIES = "probabilities"  # the converted booster's output of (p(down), p(up))
# Every file a head may read: a fixed list, so a reader of the registry knows what to fetch.
HEAD_DATA_FILES: tuple[str, ...] = (LIGHTGBM_FILE, POOLED_FILE)
HEAD_KINDS: tuple[str, ...] = ("logistic", "lightgbm", "blend")


class HeadError(ValueError):
    """A head description is invalid; the message names the problem."""


class Head(Protocol):
    """p(up) of scaled windows."""

    @property
    def kind(self) -> str: ...

    def proba(self, windows: np.ndarray) -> np.ndarray: ...

    def to_dict(self) -> dict[str, Any]: ...

    def files(self) -> tuple[str, ...]: ...


def tabular_rows(windows: np.ndarray, *, lags: int) -> np.ndarray:
    """The last `lags` steps of each window side by side, newest first: (n, lags * features)."""
    data = np.asarray(windows, dtype=np.float64)
    if data.ndim != 3:
        raise HeadError(f"expected windows of shape (n, steps, features), got {data.shape}")
    if not 1 <= lags <= data.shape[1]:
        raise HeadError(f"lags must be between 1 and the window length {data.shape[1]}, got {lags}")
    return np.concatenate([data[:, -1 - k, :] for k in range(lags)], axis=1)


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * logit)), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class LogisticHead:
    """p(up) = sigmoid(coef . rows + intercept) over `tabular_rows(windows, lags)`."""

    coef: np.ndarray
    intercept: float
    lags: int = 1
    kind: str = field(default="logistic", init=False)

    def __post_init__(self) -> None:
        coef = np.asarray(self.coef, dtype=np.float64).reshape(-1)
        if not np.isfinite(coef).all() or not math.isfinite(self.intercept):
            raise HeadError("the logistic head's coefficients must be finite numbers")
        object.__setattr__(self, "coef", coef)

    def proba(self, windows: np.ndarray) -> np.ndarray:
        rows = tabular_rows(windows, lags=self.lags)
        if rows.shape[1] != self.coef.size:
            raise HeadError(f"{rows.shape[1]} input columns for {self.coef.size} coefficients")
        return _sigmoid(rows @ self.coef + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "lags": self.lags,
            "coef": [float(c) for c in self.coef],
            "intercept": float(self.intercept),
        }

    def files(self) -> tuple[str, ...]:
        return ()


@dataclass(eq=False)
class LightGBMHead:
    """A LightGBM booster, as ONNX, over `tabular_rows(windows, lags)` (and a constant pair
    column)."""

    onnx_model: bytes
    lags: int = 1
    # Trained on several pairs: the pair column's value for this bundle's pair, and the pairs
    # in the order their codes were given.
    pair_index: int | None = None
    pairs: tuple[str, ...] = ()
    file: str = LIGHTGBM_FILE
    kind: str = field(default="lightgbm", init=False)
    _session: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.file not in HEAD_DATA_FILES:
            raise HeadError(f"a lightgbm head reads one of {', '.join(HEAD_DATA_FILES)}")
        if self.pair_index is not None and not 0 <= self.pair_index < len(self.pairs):
            raise HeadError(
                f"pair_index {self.pair_index} is not one of the {len(self.pairs)} pairs"
            )

    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                self._session = ort.InferenceSession(
                    self.onnx_model, sess_options=options, providers=["CPUExecutionProvider"]
                )
            return self._session

    def inputs(self, windows: np.ndarray) -> np.ndarray:
        """The booster's input rows: the lagged features, then the pair column if any."""
        rows = tabular_rows(windows, lags=self.lags)
        if self.pair_index is None:
            return rows
        return np.column_stack([rows, np.full(len(rows), float(self.pair_index))])

    def proba(self, windows: np.ndarray) -> np.ndarray:
        rows = self.inputs(windows)
        session = self.session()
        entry = session.get_inputs()[0]
        width = entry.shape[1]
        if isinstance(width, int) and rows.shape[1] != width:
            raise HeadError(f"{rows.shape[1]} input columns for a booster of {width}")
        if not len(rows):
            return np.zeros(0)
        (out,) = session.run(
            [PROBABILITIES], {entry.name: np.ascontiguousarray(rows, dtype=np.float32)}
        )
        return np.asarray(out, dtype=np.float64)[:, 1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "lags": self.lags,
            "file": self.file,
            "pair_index": self.pair_index,
            "pairs": list(self.pairs),
        }

    def files(self) -> tuple[str, ...]:
        return (self.file,)


@dataclass(frozen=True, eq=False)
class BlendHead:
    """The weighted mean of member heads' probabilities (weights sum to 1)."""

    members: tuple[Head, ...]
    weights: tuple[float, ...]
    kind: str = field(default="blend", init=False)

    def __post_init__(self) -> None:
        if not self.members or len(self.members) != len(self.weights):
            raise HeadError(
                f"a blend needs one weight per member: {len(self.members)} members, "
                f"{len(self.weights)} weights"
            )
        if any(not (math.isfinite(w) and w >= 0) for w in self.weights) or not math.isclose(
            sum(self.weights), 1.0, abs_tol=1e-9
        ):
            raise HeadError(f"blend weights must be >= 0 and sum to 1, got {list(self.weights)}")

    def proba(self, windows: np.ndarray) -> np.ndarray:
        total = np.zeros(len(windows))
        for member, weight in zip(self.members, self.weights, strict=True):
            if weight > 0:
                total = total + weight * member.proba(windows)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "members": [m.to_dict() for m in self.members],
            "weights": [float(w) for w in self.weights],
        }

    def files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for m in self.members for f in m.files()))


def head_from_dict(data: dict[str, Any], *, directory: Path) -> Head:
    """A head as `to_dict` wrote it; its files are read from `directory`."""
    kind = data.get("kind")
    try:
        if kind == "logistic":
            return LogisticHead(
                coef=np.asarray(data["coef"], dtype=np.float64),
                intercept=float(data["intercept"]),
                lags=int(data.get("lags", 1)),
            )
        if kind == "lightgbm":
            file = str(data.get("file", LIGHTGBM_FILE))
            if file not in HEAD_DATA_FILES:
                raise HeadError(
                    f"a lightgbm head reads one of {', '.join(HEAD_DATA_FILES)}, not {file[:40]!r}"
                )
            path = directory / file
            if not path.is_file():
                raise HeadError(f"the lightgbm head's file {file} is missing")
            index = data.get("pair_index")
            return LightGBMHead(
                onnx_model=path.read_bytes(),
                lags=int(data.get("lags", 1)),
                pair_index=None if index is None else int(index),
                pairs=tuple(str(p) for p in data.get("pairs", ())),
                file=file,
            )
        if kind == "blend":
            members = tuple(head_from_dict(m, directory=directory) for m in data["members"])
            return BlendHead(members=members, weights=tuple(float(w) for w in data["weights"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, HeadError):
            raise
        raise HeadError(f"invalid {kind} head: {exc}") from exc
    raise HeadError(f"unknown head kind {kind!r}: expected one of {', '.join(HEAD_KINDS)}")


def save_head(head: Head, directory: Path) -> Path:
    """Write `head.json` and the files its heads read into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for member in _walk(head):
        if isinstance(member, LightGBMHead):
            (directory / member.file).write_bytes(member.onnx_model)
    path = directory / HEAD_FILE
    path.write_text(json.dumps(head.to_dict(), indent=2, allow_nan=False) + "\n")
    return path


def load_head(directory: Path) -> Head:
    """The head described by `directory/head.json`."""
    try:
        data = json.loads((directory / HEAD_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise HeadError(f"{HEAD_FILE} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise HeadError(f"{HEAD_FILE} must hold an object")
    return head_from_dict(data, directory=directory)


def _walk(head: Head) -> list[Head]:
    if isinstance(head, BlendHead):
        return [h for m in head.members for h in _walk(m)]
    return [head]
