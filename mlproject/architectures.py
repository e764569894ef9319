"""Keras builders of the four architectures; each outputs the probability of "up".

Only the training modules import this file: it imports Keras (and so TensorFlow) at the top.
Every model is a plain functional graph of built-in layers, so it saves, reloads and exports to
ONNX with no custom objects.
"""

from __future__ import annotations

import keras

from pipelines.pairs import check_model_type

INPUT_NAME = "features"


def build_model(
    *,
    model_type: str,
    sequence_length: int,
    n_features: int,
    units: int,
    layers: int,
    dropout: float,
    learning_rate: float,
) -> keras.Model:
    """A compiled binary classifier (Adam, binary cross-entropy, accuracy)."""
    kind = check_model_type(model_type)
    if units < 1 or layers < 1 or not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"need units >= 1, layers >= 1 and 0 <= dropout < 1; got units={units}, "
            f"layers={layers}, dropout={dropout}"
        )
    inputs = keras.Input(shape=(sequence_length, n_features), name=INPUT_NAME)
    body = {"lstm": _recurrent, "gru": _recurrent, "cnn": _cnn, "transformer": _transformer}[kind]
    hidden = body(inputs, kind=kind, units=units, layers=layers, dropout=dropout)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_up")(hidden)
    model = keras.Model(inputs, outputs, name=f"{kind}_classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    return model


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
    return keras.layers.GlobalAveragePooling1D(name="pool")(x)


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
    return keras.layers.GlobalAveragePooling1D(name="pool")(h)
