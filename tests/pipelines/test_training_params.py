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
    settings = Settings(_env_file=None, ML_LSTM_UNITS=7, ML_EPOCHS=3, ML_SEED=9)

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


def test_a_combination_beyond_the_machine_is_refused_with_its_own_rule() -> None:
    settings = Settings(_env_file=None)

    with pytest.raises(TrainingParamError) as caught:
        resolve(settings, {"batchSize": 4096, "sequenceLength": 1000, "units": 8})

    assert str(caught.value) == (
        "model too large: batch_size 4096 x sequence_length 1000 = 4096000, above the limit "
        "batch_size x sequence_length <= 262144 (memory: one batch of windows (and a "
        "transformer's attention) must fit in memory)"
    )


def test_the_defaults_and_the_settings_values_count_in_the_combined_bound() -> None:
    # units 50 and layers 2 come from the settings: 50 x 2 x 640 = 64000 is the limit itself.
    settings = Settings(_env_file=None)
    assert resolve(settings, {"sequenceLength": 640})["sequence_length"] == 640

    with pytest.raises(TrainingParamError, match="units 50 x layers 2 x sequence_length 641"):
        resolve(settings, {"sequenceLength": 641})
