"""Keras builders of the four architectures; each outputs the probability of "up".

Only the training modules import this file: it imports Keras (and so TensorFlow) at the top.
Every model is a plain functional graph of built-in layers, so it saves, reloads and exports to
ONNX with no custom objects.

The head reads the body's hidden state at the window's last step (or its mean over the steps)
and adds a linear term of the last step's raw features to the logit: with the body's term at
zero the network is a logistic regression on the last step, the baseline it must beat.
"""

from __future__ import annotations

import keras

from pipelines.pairs import check_model_type
from pipelines.settings import NETWORK_TYPES

INPUT_NAME = "features"
OUTPUT_NAME = "p_up"
READOUTS: tuple[str, ...] = ("last", "mean")


def build_model(
    *,
    model_type: str,
    sequence_length: int,
    n_features: int,
    units: int,
    layers: int,
    dropout: float,
    learning_rate: float,
    readout: str = "last",
    skip: bool = True,
    body_l2: float = 0.0,
) -> keras.Model:
    """A compiled binary classifier (Adam, binary cross-entropy, accuracy).

    Args:
        readout: how the cnn and the transformer reduce their steps to one hidden vector:
            "last" (the window's last step, which the causal cnn's receptive field and the
            transformer's attention connect to the earlier steps) or "mean" (the average over
            all steps). The recurrent networks always read their last step.
        skip: add a linear term of the last step's input features to the logit.
        body_l2: L2 penalty on the weights that carry the body's hidden state into the logit,
            which shrinks the network towards the logistic regression of the skip.
    """
    kind = check_model_type(model_type)
    if kind not in NETWORK_TYPES:
        raise ValueError(
            f"{kind!r} is not a network: build_model builds {', '.join(NETWORK_TYPES)}"
        )
    if units < 1 or layers < 1 or not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"need units >= 1, layers >= 1 and 0 <= dropout < 1; got units={units}, "
            f"layers={layers}, dropout={dropout}"
        )
    if not body_l2 >= 0.0:
        raise ValueError(f"body_l2 must be 0 or more, got {body_l2}")
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}: allowed are {', '.join(READOUTS)}")
    inputs = keras.Input(shape=(sequence_length, n_features), name=INPUT_NAME)
    body = {"lstm": _recurrent, "gru": _recurrent, "cnn": _cnn, "transformer": _transformer}[kind]
    hidden = body(inputs, kind=kind, units=units, layers=layers, dropout=dropout)
    if len(hidden.shape) == 3:
        hidden = _read_out(hidden, readout=readout)
    # Both terms of the logit start at zero: the network starts as the constant 1/2 and the
    # body's term grows only where it lowers the training loss.
    logit = keras.layers.Dense(
        1,
        kernel_initializer="zeros",
        kernel_regularizer=keras.regularizers.L2(body_l2) if body_l2 > 0.0 else None,
        name="logit_body",
    )(hidden)
    if skip:
        last_step = keras.layers.Flatten(name="last_step_features")(
            keras.layers.Cropping1D((sequence_length - 1, 0), name="last_step")(inputs)
        )
        linear = keras.layers.Dense(1, kernel_initializer="zeros", name="logit_skip")(last_step)
        logit = keras.layers.Add(name="logit")([logit, linear])
    outputs = keras.layers.Activation("sigmoid", name=OUTPUT_NAME)(logit)
    model = keras.Model(inputs, outputs, name=f"{kind}_classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


def average_models(models: list[keras.Model]) -> keras.Model:
    """One model of the same input whose output is the mean of `models`' probabilities.

    The members keep their layers and weights; each is renamed `member_<i>` inside the new
    graph, so seeds of one architecture (same layer names) can sit side by side and the result
    saves and exports to ONNX as one graph.
    """
    if not models:
        raise ValueError("average_models needs at least one model, got none")
    shapes = {tuple(m.input_shape) for m in models}
    if len(shapes) != 1:
        raise ValueError(f"the models must share one input shape, got {sorted(shapes)}")
    inputs = keras.Input(shape=models[0].input_shape[1:], name=INPUT_NAME)
    probabilities = [
        keras.Model(m.input, m.output, name=f"member_{i}")(inputs) for i, m in enumerate(models)
    ]
    if len(probabilities) == 1:
        outputs = keras.layers.Identity(name=OUTPUT_NAME)(probabilities[0])
    else:
        outputs = keras.layers.Average(name=OUTPUT_NAME)(probabilities)
    averaged = keras.Model(inputs, outputs, name="seed_average")
    # Keras exports only a model that has been called once; a fitted member was, this one not.
    averaged(keras.ops.zeros((1, *models[0].input_shape[1:])))
    return averaged


def _read_out(x: keras.KerasTensor, *, readout: str) -> keras.KerasTensor:
    if readout == "mean":
        return keras.layers.GlobalAveragePooling1D(name="pool")(x)
    length = int(x.shape[1])
    return keras.layers.Flatten(name="last_hidden")(
        keras.layers.Cropping1D((length - 1, 0), name="last_hidden_step")(x)
    )


def _recurrent(
    x: keras.KerasTensor, *, kind: str, units: int, layers: int, dropout: float
) -> keras.KerasTensor:
    cell = keras.layers.LSTM if kind == "lstm" else keras.layers.GRU
    for i in range(layers):
        x = cell(units, return_sequences=i < layers - 1, name=f"{kind}_{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    return x


def _cnn(
    x: keras.KerasTensor, *, kind: str, units: int, layers: int, dropout: float
) -> keras.KerasTensor:
    for i in range(layers):
        # Causal padding keeps each step's output a function of that step and earlier ones.
        x = keras.layers.Conv1D(
            units, kernel_size=3, padding="causal", activation="relu", name=f"conv_{i}"
        )(x)
        x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    return x


def _transformer(
    x: keras.KerasTensor, *, kind: str, units: int, layers: int, dropout: float
) -> keras.KerasTensor:
    length = int(x.shape[1])
    h = keras.layers.Dense(units, name="embed")(x)
    # Positions derived from the input itself: a constant would become a second graph input in
    # the ONNX export.
    steps = keras.ops.cumsum(keras.ops.ones_like(x[:, :, 0]), axis=1) - 1.0
    positions = keras.layers.Embedding(length, units, name="position")(
        keras.ops.cast(steps, "int32")
    )
    h = keras.layers.Add(name="add_position")([h, positions])
    heads = 2 if units % 2 == 0 else 1
    for i in range(layers):
        attended = keras.layers.MultiHeadAttention(
            num_heads=heads, key_dim=max(1, units // heads), dropout=dropout, name=f"attention_{i}"
        )(h, h)
        h = keras.layers.LayerNormalization(name=f"norm_a_{i}")(
            keras.layers.Add(name=f"residual_a_{i}")([h, attended])
        )
        ff = keras.layers.Dense(units * 2, activation="relu", name=f"ff_in_{i}")(h)
        ff = keras.layers.Dropout(dropout, name=f"dropout_{i}")(ff)
        ff = keras.layers.Dense(units, name=f"ff_out_{i}")(ff)
        h = keras.layers.LayerNormalization(name=f"norm_f_{i}")(
            keras.layers.Add(name=f"residual_f_{i}")([h, ff])
        )
    return h
