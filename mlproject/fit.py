"""Seeding and fitting a Keras model with early stopping, reporting each epoch to a callback."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mlproject.fit_result import FitResult

EpochSink = Callable[[int, dict[str, float]], None]
EPOCH_METRICS: tuple[str, ...] = ("loss", "val_loss", "accuracy", "val_accuracy")


def make_deterministic(seed: int) -> None:
    """Fresh Keras state, seeded Python/NumPy/TF generators and deterministic TF kernels.

    The same seed and data then give the same weights, so the same command gives the same
    metrics.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class _EpochReporter(keras.callbacks.Callback):
    def __init__(self, sink: EpochSink) -> None:
        super().__init__()
        self._sink = sink
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values = {k: float(v) for k, v in (logs or {}).items() if k in EPOCH_METRICS}
        values["epoch_seconds"] = time.perf_counter() - self._started
        self._sink(epoch, values)


def fit_model(
    model: keras.Model,
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    epochs: int,
    batch_size: int,
    patience: int,
    on_epoch: EpochSink | None = None,
) -> FitResult:
    """Fit with early stopping on validation loss; the best epoch's weights are restored."""
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=patience, restore_best_weights=True
    )
    callbacks: list[keras.callbacks.Callback] = [stopper]
    if on_epoch is not None:
        callbacks.append(_EpochReporter(on_epoch))
    started = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    fit_seconds = time.perf_counter() - started
    values = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    epochs_run = len(values.get("loss", []))
    val_loss = values.get("val_loss", [])
    best = int(np.argmin(val_loss)) if val_loss else epochs_run - 1
    return FitResult(
        history=values, best_epoch=best, epochs_run=epochs_run, fit_seconds=fit_seconds
    )


def fit_epochs(
    model: keras.Model,
    *,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    on_epoch: EpochSink | None = None,
) -> FitResult:
    """Fit for exactly `epochs` epochs on all of `x`, with nothing held out to stop on.

    The refit of a training: its epoch count is the one early stopping chose on the held-out
    run, so no validation part is needed.
    """
    callbacks: list[keras.callbacks.Callback] = []
    if on_epoch is not None:
        callbacks.append(_EpochReporter(on_epoch))
    started = time.perf_counter()
    history = model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    fit_seconds = time.perf_counter() - started
    values = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    epochs_run = len(values.get("loss", []))
    return FitResult(
        history=values, best_epoch=epochs_run - 1, epochs_run=epochs_run, fit_seconds=fit_seconds
    )
