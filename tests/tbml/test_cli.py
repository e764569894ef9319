"""`tbml` (the script and `python -m tbml`) registers every layer's commands."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from pipelines.settings import PROJECT_ROOT
from tbml.cli import app

# One command of each layer's group at least: candles, features, queue, training, service.
COMMANDS = ("ingest", "features", "worker", "queue", "train", "evaluate", "promote", "serve", "up")


def test_help_lists_every_layers_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[1] for line in result.output.splitlines() if line.startswith("│ ")}
    assert set(COMMANDS) <= listed


def test_python_dash_m_tbml_runs_the_same_app() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tbml", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage: tbml" in result.stdout
    assert "serve" in result.stdout
