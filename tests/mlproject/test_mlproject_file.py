"""MLproject agrees with the one definition of the training parameters (training_params)."""

from __future__ import annotations

import shlex

import pytest
from mlflow.projects._project_spec import load_project

from mlproject.cli import _training_options
from pipelines.settings import PROJECT_ROOT
from pipelines.training_params import PARAMS

# What `train` declares besides the training parameters: none of them has a setting.
NOT_TRAINING_PARAMS = {"pair", "model_type", "register", "promote"}


def _train_entry_point():  # type: ignore[no-untyped-def]
    return load_project(str(PROJECT_ROOT)).get_entry_point("train")


def test_train_declares_no_training_parameter_with_a_default_of_its_own() -> None:
    # A declared default is logged by `mlflow run` and passed on every run: it would override
    # the setting (ML_LSTM_UNITS, ...) that a left-out parameter must mean.
    declared = set(_train_entry_point().parameters)
    assert declared == NOT_TRAINING_PARAMS
    assert not declared & set(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_each_training_parameter_passed_to_mlflow_run_reaches_the_entry_point(name: str) -> None:
    param = PARAMS[name]
    value = str(param.kind(param.high - 1 if param.kind is int else param.low))
    command = _train_entry_point().compute_command({"pair": "BTC", name: value}, None)
    tokens = shlex.split(command)
    # Drop `python -m mlproject.cli train` and the declared options; the rest are extras.
    rest = tokens[tokens.index("train") + 1 :]
    extras = []
    while rest:
        token = rest.pop(0)
        if token.lstrip("-").replace("-", "_") in NOT_TRAINING_PARAMS:
            rest.pop(0)
        else:
            extras.append(token)

    assert _training_options(extras) == {name: param.kind(value)}


def test_left_out_parameters_do_not_reach_the_command() -> None:
    command = _train_entry_point().compute_command({"pair": "BTC"}, None)
    assert not any(f"--{name.replace('_', '-')}" in command for name in PARAMS)
    assert "''" not in command
