"""The environment of a training child: the parent's, plus the parent's settings spelled out.

A scheduler may run on settings that did not come from its environment (tests build them in
code; the service may too). Writing every setting into the child's environment under its own
variable name makes the child's `get_settings()` equal the parent's, whatever their origin.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pydantic import AliasChoices

from pipelines.settings import Settings

# Variables a parent may carry from an MLflow run of its own; `mlflow run` sets its child's.
_DROPPED = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def _variable(alias: object) -> str | None:
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices) and alias.choices:
        first = alias.choices[0]
        return first if isinstance(first, str) else None
    return None


def _text(value: object) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def settings_environment(settings: Settings) -> dict[str, str]:
    """Each setting under the first environment variable name it is read from."""
    env: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        variable = _variable(field.validation_alias)
        value = getattr(settings, name)
        if variable is not None and value is not None:
            env[variable] = _text(value)
    return env


def child_environment(settings: Settings, *, extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment, its settings, `extra`, and this interpreter's bin on PATH.

    `mlflow run` starts the entry point's `python ...` through a shell, so the directory of
    the interpreter running the scheduler goes first on PATH: the child runs in the same venv
    even when the scheduler was started as `.venv/bin/tbml` without an activated venv.
    """
    env = {key: value for key, value in os.environ.items() if key not in _DROPPED}
    env.update(settings_environment(settings))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
