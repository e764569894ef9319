"""The one definition of the training parameters, and the settings that give their defaults."""

from __future__ import annotations

import pytest

from pipelines.settings import Settings
from pipelines.training_params import PARAMS, TrainingParamError, check_params, resolve


def test_every_parameter_is_a_setting_read_from_its_variable() -> None:
    for param in PARAMS.values():
        field = Settings.model_fields[param.setting]
        assert field.validation_alias == param.env, param.name


def test_settings_refuse_what_the_definition_refuses() -> None:
    for param in PARAMS.values():
        too_high = param.high + (1 if param.kind is int else 0)
        with pytest.raises(ValueError, match=param.env):
            Settings(_env_file=None, **{param.env: too_high})  # type: ignore[arg-type]


def test_left_out_parameters_are_the_settings_values() -> None:
    settings = Settings(_env_file=None, ML_LSTM_UNITS=7, ML_EPOCHS=3, ML_SEED=9)  # type: ignore[call-arg]

    values = resolve(settings, {"learningRate": "0.01", "layers": 1})

    assert values["units"] == 7
    assert values["epochs"] == 3
    assert values["seed"] == 9
    assert values["learning_rate"] == 0.01
    assert values["layers"] == 1
    assert set(values) == set(PARAMS)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"units": 1025}, "invalid units 1025: expected an integer with 1 <= value <= 1024"),
        ({"dropout": True}, "invalid dropout True"),
        ({"batchSize": 0}, "invalid batch_size 0"),
        ({"optimizer": "sgd"}, "unknown training parameter 'optimizer'"),
    ],
)
def test_bad_values_name_the_value_and_the_rule(raw: dict[str, object], words: str) -> None:
    with pytest.raises(TrainingParamError) as caught:
        check_params(raw)
    assert words in str(caught.value)
