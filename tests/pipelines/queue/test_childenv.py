"""A training child sees exactly the scheduler's settings, whatever their origin."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipelines.queue.childenv import child_environment, settings_environment
from pipelines.settings import Settings
from tests.pipelines.queue.conftest import make_settings


def test_settings_survive_the_trip_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = make_settings(
        tmp_path,
        pairs=["BTC", "ETH"],
        enabled_models=["lstm", "gru"],
        retrain_interval_hours={"BTC": 12},
        serve_unproven=True,
    )
    for name, value in settings_environment(original).items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == original


def test_child_environment_puts_this_interpreter_first_and_drops_a_parent_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_RUN_ID", "parent-run")
    env = child_environment(make_settings(tmp_path), extra={"TBML_JOB_ID": "BTC_lstm_1"})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert "MLFLOW_RUN_ID" not in env
    assert env["TBML_JOB_ID"] == "BTC_lstm_1"
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'mlflow.db'}"
