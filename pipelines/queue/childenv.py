"""The environment of a training child: what it needs of the parent's, and its settings.

A scheduler may run on settings that did not come from its environment (tests build them in
code; the service may too). Writing every setting into the child's environment under its own
variable name makes the child's `get_settings()` equal the parent's, whatever their origin.

Only what a training needs crosses over: the system basics (PATH, HOME, locale, temporary
directory), the settings (ML_*) and MLflow's variables (MLFLOW_*, with the credentials of an
authenticated tracking server), the numeric libraries' knobs (TF_*, OMP_*, ...), PYTHON*, the
artifact store's AWS_* and the tests' TBML_*. Never the API key, nor the service database's
URL (a training never opens it, and it may carry a password), nor anything else the parent has.
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
# Settings a training does not need and must not see.
_WITHHELD_SETTINGS = ("api_key", "database_url", "scheduler_database_url")
KEPT_NAMES = frozenset(
    {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "USER", "LOGNAME"}
)
KEPT_PREFIXES = (
    "LC_",
    "ML_",
    "MLFLOW_",
    "TF_",
    "OMP_",
    "OPENBLAS_",
    "MKL_",
    "KMP_",
    "CUDA_",
    "PYTHON",
    "AWS_",
    "TBML_",
)


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


def withheld_variables() -> set[str]:
    """The environment variables of `_WITHHELD_SETTINGS` (every name each is read from)."""
    names: set[str] = set()
    for name in _WITHHELD_SETTINGS:
        alias = Settings.model_fields[name].validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
    return names


def _kept(name: str, withheld: set[str]) -> bool:
    if name in _DROPPED or name in withheld:
        return False
    return name in KEPT_NAMES or name.startswith(KEPT_PREFIXES)


def child_environment(settings: Settings, *, extra: dict[str, str]) -> dict[str, str]:
    """What the child needs of the parent's environment, its settings, `extra`, and this
    interpreter's bin on PATH.

    `mlflow run` starts the entry point's `python ...` through a shell, so the directory of
    the interpreter running the scheduler goes first on PATH: the child runs in the same venv
    even when the scheduler was started as `.venv/bin/tbml` without an activated venv.
    """
    withheld = withheld_variables()
    env = {key: value for key, value in os.environ.items() if _kept(key, withheld)}
    env.update(
        (key, value) for key, value in settings_environment(settings).items() if key not in withheld
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
