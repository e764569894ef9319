"""Every registry write on a real MLflow tracking store (a SQLite file in tmp_path)."""

from __future__ import annotations

import warnings
import zlib

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.lifecycle.registry import (
    retire_challenger,
    set_challenger,
    set_production,
    tag_version,
    undo_versions_of_run,
)
from pipelines.settings import Settings
from pipelines.tracking import (
    ARCHIVED_STAGE,
    CHALLENGER_ALIAS,
    PRODUCTION_STAGE,
    TAG_CHALLENGER_OUTCOME,
    TAG_CHALLENGER_REASON,
    TAG_CHALLENGER_SINCE,
    TAG_ROLLED_BACK,
    TAG_ROLLED_BACK_REASON,
    aliased_version,
    client_for,
    ensure_training_experiment,
    production_version,
)
from tests.conftest import stores_under


class Store:
    """A registered model in a real tracking store; each run registers one version of it."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.client: MlflowClient = client_for(settings)
        self.experiment = ensure_training_experiment(self.client, settings)
        self.client.create_registered_model(name)

    def version(self) -> tuple[str, str]:
        """A finished run and the version registered from it: (version, run id)."""
        run = self.client.create_run(self.experiment)
        self.client.log_text(run.info.run_id, "a model", "model/README.txt")
        self.client.set_terminated(run.info.run_id)
        created = self.client.create_model_version(
            self.name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        )
        return str(created.version), run.info.run_id

    def stage(self, version: str) -> str:
        with warnings.catch_warnings():  # stages are deprecated, still mirrored
            warnings.simplefilter("ignore", FutureWarning)
            return str(self.client.get_model_version(self.name, version).current_stage)

    def tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.name, version).tags)

    def exists(self, version: str) -> bool:
        try:
            self.client.get_model_version(self.name, version)
        except MlflowException:
            return False
        return True


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return stores_under(tmp_path_factory.mktemp("registry"))


@pytest.fixture
def store(tracked: Settings, request: pytest.FixtureRequest) -> Store:
    # One store for the module (creating one takes seconds); one registered model per test.
    return Store(tracked, f"T{zlib.crc32(request.node.name.encode())}-lstm")


# --- cancelling a run -------------------------------------------------------------------------


def test_cancelling_the_run_of_a_first_promoted_version_keeps_it_as_production(
    store: Store,
) -> None:
    first, run = store.version()
    set_production(store.client, name=store.name, version=first)

    done = undo_versions_of_run(store.settings, run)

    assert done == [f"{store.name} version {first} kept as production (no earlier version)"]
    assert store.exists(first)
    assert production_version(store.client, name=store.name) == first
    assert store.stage(first) == PRODUCTION_STAGE
    tags = store.tags(first)
    assert tags[TAG_ROLLED_BACK] == "false"
    assert f"run {run} was cancelled" in tags[TAG_ROLLED_BACK_REASON]
    assert "no earlier version to restore" in tags[TAG_ROLLED_BACK_REASON]


def test_cancelling_the_run_of_a_promoted_version_restores_the_previous_one(
    store: Store,
) -> None:
    old, _ = store.version()
    set_production(store.client, name=store.name, version=old)
    new, run = store.version()
    set_production(store.client, name=store.name, version=new)
    assert store.stage(old) == ARCHIVED_STAGE

    done = undo_versions_of_run(store.settings, run)

    assert done == [f"{store.name} version {new} rolled back to version {old}"]
    assert production_version(store.client, name=store.name) == old
    assert store.stage(old) == PRODUCTION_STAGE
    # Kept, not deleted: predictions were served from it and their history names it.
    assert store.exists(new)
    assert store.stage(new) == ARCHIVED_STAGE
    assert store.tags(new)[TAG_ROLLED_BACK] == "true"
    assert f"production restored to version {old}" in store.tags(new)[TAG_ROLLED_BACK_REASON]
    assert TAG_ROLLED_BACK not in store.tags(old)


def test_cancelling_the_run_of_a_version_that_never_served_deletes_it(store: Store) -> None:
    production, _ = store.version()
    set_production(store.client, name=store.name, version=production)
    new, run = store.version()

    done = undo_versions_of_run(store.settings, run)

    assert done == [f"{store.name} version {new} deleted"]
    assert not store.exists(new)
    assert production_version(store.client, name=store.name) == production


# --- the aliases ------------------------------------------------------------------------------


def test_a_new_challenger_supersedes_the_old_one_and_tags_it_retired(store: Store) -> None:
    production, _ = store.version()
    set_production(store.client, name=store.name, version=production)
    first, _ = store.version()
    second, _ = store.version()

    assert set_challenger(store.client, name=store.name, version=first, now_ms=1_000) is None
    assert store.tags(first)[TAG_CHALLENGER_SINCE] == "1000"
    replaced = set_challenger(store.client, name=store.name, version=second, now_ms=2_000)

    assert replaced == first
    assert aliased_version(store.client, name=store.name, alias=CHALLENGER_ALIAS) == second
    assert store.tags(second)[TAG_CHALLENGER_SINCE] == "2000"
    assert TAG_CHALLENGER_OUTCOME not in store.tags(second)
    assert store.tags(first)[TAG_CHALLENGER_OUTCOME] == "retired"
    assert store.tags(first)[TAG_CHALLENGER_REASON] == (
        f"superseded by version {second}, which passed the offline gate after it"
    )
    # The same version again supersedes nothing.
    assert set_challenger(store.client, name=store.name, version=second, now_ms=3_000) is None
    assert TAG_CHALLENGER_OUTCOME not in store.tags(second)
    assert production_version(store.client, name=store.name) == production


def test_promoting_the_challenger_clears_its_alias_and_archives_the_old_production(
    store: Store,
) -> None:
    old, _ = store.version()
    set_production(store.client, name=store.name, version=old)
    challenger, _ = store.version()
    set_challenger(store.client, name=store.name, version=challenger, now_ms=1_000)

    set_production(store.client, name=store.name, version=challenger)

    assert production_version(store.client, name=store.name) == challenger
    assert aliased_version(store.client, name=store.name, alias=CHALLENGER_ALIAS) is None
    assert store.stage(challenger) == PRODUCTION_STAGE
    assert store.stage(old) == ARCHIVED_STAGE


def test_promoting_another_version_leaves_the_challenger_alias_alone(store: Store) -> None:
    old, _ = store.version()
    set_production(store.client, name=store.name, version=old)
    challenger, _ = store.version()
    set_challenger(store.client, name=store.name, version=challenger, now_ms=1_000)
    forced, _ = store.version()

    set_production(store.client, name=store.name, version=forced)

    assert production_version(store.client, name=store.name) == forced
    assert aliased_version(store.client, name=store.name, alias=CHALLENGER_ALIAS) == challenger


def test_retiring_a_challenger_removes_its_alias_only_while_it_holds_it(store: Store) -> None:
    first, _ = store.version()
    second, _ = store.version()
    set_challenger(store.client, name=store.name, version=second, now_ms=1_000)

    assert not retire_challenger(
        store.client, name=store.name, version=first, tags={TAG_CHALLENGER_OUTCOME: "retired"}
    )
    assert aliased_version(store.client, name=store.name, alias=CHALLENGER_ALIAS) == second
    assert retire_challenger(
        store.client, name=store.name, version=second, tags={TAG_CHALLENGER_OUTCOME: "retired"}
    )
    assert aliased_version(store.client, name=store.name, alias=CHALLENGER_ALIAS) is None
    assert store.tags(second)[TAG_CHALLENGER_OUTCOME] == "retired"
    assert store.tags(first)[TAG_CHALLENGER_OUTCOME] == "retired"


def test_tagging_a_version_drops_only_the_named_tags_it_does_not_set(store: Store) -> None:
    version, _ = store.version()
    tag_version(
        store.client, name=store.name, version=version, tags={"a": "1", "b": "2", "keep": "x"}
    )

    tag_version(
        store.client, name=store.name, version=version, tags={"a": "3"}, drop=("a", "b", "c")
    )

    assert store.tags(version) == {"a": "3", "keep": "x"}
