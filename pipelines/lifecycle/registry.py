"""Every write to the model registry: aliases, the legacy stage mirror, and version tags.

The gate, the challenger policy, the cancel of a run and the validation of production change the
registry only through these functions, so who points where and which tags record it is defined
once. Tag and alias names live in `pipelines.tracking` (the names are the contract every reader
shares); MLflow's client is passed in, so nothing here imports MLflow at import time.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipelines.settings import Settings
from pipelines.tracking import (
    ARCHIVED_STAGE,
    CHALLENGER_ALIAS,
    PRODUCTION_ALIAS,
    PRODUCTION_STAGE,
    TAG_CHALLENGER_OUTCOME,
    TAG_CHALLENGER_REASON,
    TAG_CHALLENGER_SINCE,
    TAG_ROLLED_BACK,
    TAG_ROLLED_BACK_REASON,
    TAG_VALIDATED_THROUGH,
    aliased_version,
    client_for,
    production_version,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)


def tag_version(
    client: MlflowClient,
    *,
    name: str,
    version: str,
    tags: Mapping[str, str],
    drop: tuple[str, ...] = (),
) -> None:
    """Set `tags` on the version and delete those of `drop` it holds that `tags` does not set."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if drop:
        held = dict(client.get_model_version(name, version).tags)
        for key in drop:
            if key in held and key not in tags:
                client.delete_model_version_tag(name, version, key)


def set_production(client: MlflowClient, *, name: str, version: str) -> None:
    """Point the `production` alias at `version` and mirror the legacy stage.

    A version that was the challenger stops being one (an alias names one version per role).
    """
    client.set_registered_model_alias(name, PRODUCTION_ALIAS, version)
    if aliased_version(client, name=name, alias=CHALLENGER_ALIAS) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER_ALIAS)
    # Stages are deprecated in MLflow (FutureWarning) but still shown by the UI; the alias is
    # the source of truth and the stage only mirrors it while it exists. The previous holders
    # are archived one by one: `archive_existing_versions=True` fails on a PostgreSQL-backed
    # registry in MLflow 3.17 (it compares the integer version column with a string).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(
            name, version, PRODUCTION_STAGE, archive_existing_versions=False
        )
        for other in client.search_model_versions(f"name = '{name}'"):
            if str(other.version) != str(version) and other.current_stage == PRODUCTION_STAGE:
                client.transition_model_version_stage(name, other.version, ARCHIVED_STAGE)


def set_challenger(client: MlflowClient, *, name: str, version: str, now_ms: int) -> str | None:
    """Point the `challenger` alias at `version`, tagged with when; returns the version it
    replaced (tagged retired, superseded), or None."""
    previous = aliased_version(client, name=name, alias=CHALLENGER_ALIAS)
    client.set_registered_model_alias(name, CHALLENGER_ALIAS, version)
    client.set_model_version_tag(name, version, TAG_CHALLENGER_SINCE, str(now_ms))
    if previous is not None and previous != str(version):
        client.set_model_version_tag(name, previous, TAG_CHALLENGER_OUTCOME, "retired")
        client.set_model_version_tag(
            name,
            previous,
            TAG_CHALLENGER_REASON,
            f"superseded by version {version}, which passed the offline gate after it",
        )
        return previous
    return None


def retire_challenger(
    client: MlflowClient, *, name: str, version: str, tags: dict[str, str]
) -> bool:
    """Remove the `challenger` alias from `version` (if it still holds it) and tag why;
    returns whether it held the alias."""
    held = aliased_version(client, name=name, alias=CHALLENGER_ALIAS) == str(version)
    if held:
        client.delete_registered_model_alias(name, CHALLENGER_ALIAS)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return held


def mark_validated(client: MlflowClient, *, name: str, version: str, through_ms: int) -> None:
    """Record that live candles through `through_ms` (the last candle a live comparison
    used) kept `version` as production: its age counts from there (`staleness`). A mark never
    moves back: an earlier `through_ms` than the one held leaves the tag as it is."""
    held = validated_through_of(client.get_model_version(name, version).tags or {})
    if held is not None and held >= through_ms:
        return
    client.set_model_version_tag(name, version, TAG_VALIDATED_THROUGH, str(int(through_ms)))


def validated_through_of(tags: Mapping[str, str]) -> int | None:
    """A version's `tbml.validated_through` tag (epoch ms), or None when it has none (or a
    value that is not one)."""
    value = str(tags.get(TAG_VALIDATED_THROUGH, "")).strip()
    return int(value) if value.isdigit() else None


def delete_versions_of_run(settings: Settings, run_id: str) -> list[tuple[str, str]]:
    """Delete every registered model version made from this run; return (name, version)s."""
    client = client_for(settings)
    deleted = []
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        client.delete_model_version(version.name, version.version)
        deleted.append((str(version.name), str(version.version)))
        logger.info("deleted %s version %s (its run %s was killed)", *deleted[-1], run_id)
    return deleted


def undo_versions_of_run(settings: Settings, run_id: str) -> list[str]:
    """Undo what a cancelled run registered, without ever leaving its pair without production.

    A version of the run that is not production is deleted. One that became production hands
    the alias back to the version it replaced (the most recently archived one), which returns
    to the Production stage; the cancelled version is archived and tagged `tbml.rolled_back`,
    not deleted, because predictions were served from it and their history names it. With no
    earlier version to go back to, it stays production (tagged so): the pair keeps a model.
    Returns one line per version saying what was done.
    """
    client = client_for(settings)
    done = []
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        name, number = str(version.name), str(version.version)
        if production_version(client, name=name) != number:
            client.delete_model_version(name, number)
            done.append(f"{name} version {number} deleted")
        else:
            done.append(_roll_back(client, name=name, version=number, run_id=run_id))
        logger.info("run %s cancelled: %s", run_id, done[-1])
    return done


def _roll_back(client: MlflowClient, *, name: str, version: str, run_id: str) -> str:
    previous = _previous_production(client, name=name, run_id=run_id)
    if previous is None:
        reason = f"run {run_id} was cancelled; kept as production: no earlier version to restore"
        client.set_model_version_tag(name, version, TAG_ROLLED_BACK, "false")
        client.set_model_version_tag(name, version, TAG_ROLLED_BACK_REASON, reason)
        return f"{name} version {version} kept as production (no earlier version)"
    client.set_registered_model_alias(name, PRODUCTION_ALIAS, previous)
    with warnings.catch_warnings():  # stages are deprecated, still shown by the UI
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(name, previous, PRODUCTION_STAGE)
        client.transition_model_version_stage(name, version, ARCHIVED_STAGE)
    reason = f"run {run_id} was cancelled; production restored to version {previous}"
    client.set_model_version_tag(name, version, TAG_ROLLED_BACK, "true")
    client.set_model_version_tag(name, version, TAG_ROLLED_BACK_REASON, reason)
    return f"{name} version {version} rolled back to version {previous}"


def _previous_production(client: MlflowClient, *, name: str, run_id: str) -> str | None:
    """The version the cancelled run's production replaced: one of another run still in the
    Production stage (the run was killed between moving the alias and archiving it), else
    the most recently archived one."""
    others = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id != run_id]
    for stage in (PRODUCTION_STAGE, ARCHIVED_STAGE):
        found = [v for v in others if v.current_stage == stage]
        if found:
            latest = max(found, key=lambda v: (v.last_updated_timestamp or 0, int(v.version)))
            return str(latest.version)
    return None
