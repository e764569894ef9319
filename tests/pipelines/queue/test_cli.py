"""`tbml queue ...` on a real database, through the same domain API as the REST routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.queue.childenv import settings_environment
from pipelines.settings import Settings, get_settings
from tbml.cli import app
from tests.pipelines.queue.conftest import make_settings


@pytest.fixture
def cli_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The CLI reads its settings from the environment: point them at `tmp_path`."""
    monkeypatch.chdir(tmp_path)  # no `.env` of the repository
    settings = make_settings(tmp_path)
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_enqueue_then_status_shows_the_job(cli_settings: Settings) -> None:
    code, out, _ = _run("queue", "enqueue", "btc", "lstm", "--priority", "2", "--epochs", "7")
    assert code == 0
    job_id = out.split(":")[0]
    assert job_id.startswith("BTC_lstm_")
    code, out, _ = _run("queue", "status", "--json")
    assert code == 0
    queued = json.loads(out)["queue"]["queued"]["jobs"]
    assert [(j["id"], j["priority"], j["requestedBy"]) for j in queued] == [(job_id, 2, "cli")]
    code, out, _ = _run("queue", "show", job_id)
    assert json.loads(out)["params"] == {"epochs": 7}
    code, out, _ = _run("queue", "status")
    assert f"1. {job_id}  priority 2" in out


def test_enqueue_passes_train_parameters_and_refuses_bad_ones(cli_settings: Settings) -> None:
    code, out, _ = _run(
        "queue", "enqueue", "ETH", "-P", "batch_size=16", "-P", "dropout=0.3", "--json"
    )
    assert code == 0
    assert json.loads(out)["modelType"] == "lstm"
    code, _, err = _run("queue", "enqueue", "XMR", "-P", "optimizer=sgd")
    assert code == 2
    assert "unknown training parameter 'optimizer'" in err
    code, _, err = _run("queue", "enqueue", "DOGE")
    assert code == 2
    assert "unknown pair 'DOGE'" in err


def test_a_duplicate_enqueue_fails_naming_the_existing_job(cli_settings: Settings) -> None:
    _, out, _ = _run("queue", "enqueue", "BTC")
    job_id = out.split(":")[0]
    code, _, err = _run("queue", "enqueue", "BTC")
    assert code == 1
    assert job_id in err


def test_cancel_stop_resume_and_clear_cooldowns(cli_settings: Settings) -> None:
    _, out, _ = _run("queue", "enqueue", "BTC")
    job_id = out.split(":")[0]
    code, out, _ = _run("queue", "cancel", job_id, "--reason", "not needed", "--json")
    assert code == 0
    assert json.loads(out)["status"] == "cancelled"
    code, _, err = _run("queue", "cancel", "BTC_lstm_42")
    assert code == 1
    assert "unknown job id" in err

    _, out, _ = _run("queue", "enqueue", "ETH")
    waiting = out.split(":")[0]
    code, out, _ = _run("queue", "stop", "--json")
    assert code == 0
    assert json.loads(out)["cancelledJobs"] == [waiting]
    _, out, _ = _run("queue", "status")
    assert "DISPATCH PAUSED" in out
    code, out, _ = _run("queue", "resume")
    assert code == 0
    assert "resumed" in out

    code, out, _ = _run("queue", "clear-cooldowns", "--pair", "BTC", "--model-type", "lstm")
    assert code == 0
    assert "Cleared 0 cooldown" in out
