"""The retraining policy for real: a SQLite service database, a candle store in tmp, MLflow.

The production registry is a stand-in function (it says which version is production, where its
data ends and what it learnt), except in the tests of `registry_data_end`, which read a real
MLflow store. The rule itself is `pipelines.lifecycle.retraining.trigger` (its own table test);
here, the chore gathers the facts and queues what the rule asks for.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipelines import tracking
from pipelines.candles.store import CandleStore
from pipelines.candles.validate import read_candle_file
from pipelines.db import migrate
from pipelines.lifecycle.registry import mark_validated, set_challenger
from pipelines.lifecycle.retraining import PRIORITY_URGENT, Production
from pipelines.queue import lease, transitions
from pipelines.queue.api import REQUESTERS, TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.params import PRIORITY_LOWEST
from pipelines.queue.policy import (
    Decision,
    RetrainingPolicy,
    registry_challenger,
    registry_data_end,
)
from pipelines.queue.tables import SUCCEEDED
from pipelines.queue.transitions import Ending
from pipelines.settings import Settings
from pipelines.tracking import RunReport
from tests.conftest import BUNDLED, write_newer_candles
from tests.pipelines.queue.conftest import make_settings

BTC_FILE = "BTC-USDT_1h.csv.gz"
BUNDLED_END = read_candle_file(BUNDLED / BTC_FILE).index[-1]
NO_PRODUCTION = "no production version: bootstrap or train it first"
HOUR = pd.Timedelta(hours=1)


class Registry:
    """Stand-in for the registry: the production facts of each slot."""

    def __init__(self) -> None:
        self.production: dict[tuple[str, str], Production] = {}

    def __call__(self, pair: str, model_type: str) -> Production | None:
        return self.production.get((pair, model_type))


@pytest.fixture
def policy_settings(tmp_path: Path) -> Settings:
    """BTC and ETH configured; only BTC has candles (a copy of the bundled file, in tmp)."""
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    shutil.copyfile(BUNDLED / BTC_FILE, bundled / BTC_FILE)
    settings = make_settings(tmp_path, bundled_data_dir=bundled, pairs=["BTC", "ETH"])
    migrate(settings)
    return settings


@pytest.fixture
def registry() -> Registry:
    """BTC-lstm version 3 is production, trained on every bundled candle."""
    found = Registry()
    found.production["BTC", "lstm"] = Production("3", BUNDLED_END)
    return found


def _policy(settings: Settings, registry: Registry) -> RetrainingPolicy:
    return RetrainingPolicy(
        settings,
        TrainingQueue(settings),
        store=CandleStore.from_settings(settings),
        production_data_end=registry,
    )


def _btc(decisions: list[Decision]) -> Decision:
    (found,) = [d for d in decisions if (d.pair, d.model_type) == ("BTC", "lstm")]
    return found


def _queued(settings: Settings) -> list[tuple[str, str, str, int]]:
    jobs = TrainingQueue(settings).queue_status().queue.queued.jobs
    return [(job.id, job.pair, job.requested_by, job.priority) for job in jobs]


def _end_job(settings: Settings, job_id: str, *, data_end: pd.Timestamp) -> None:
    """Run the job's attempt to its end as the dispatcher does: a rejected challenger."""
    url = settings.database_url
    assert lease.acquire(url, holder="test-worker", ttl_ms=60_000, now=now_ms())
    attempt = transitions.claim(url, job_id=job_id, worker_id="test-worker", now=now_ms())
    assert attempt is not None
    assert transitions.finish_attempt(
        url,
        job_id=job_id,
        worker_id="test-worker",
        attempt=attempt,
        ending=Ending(SUCCEEDED, 0),
        now=now_ms(),
        report=RunReport(promotion="rejected", data_end=int(data_end.timestamp() * 1000)),
    )


def test_a_stale_production_version_is_retrained_once_with_a_reason_naming_the_hours(
    policy_settings: Settings, registry: Registry
) -> None:
    registry.production["BTC", "lstm"] = Production("3", BUNDLED_END - 200 * HOUR)
    policy = _policy(policy_settings, registry)

    decision = _btc(policy.evaluate())

    assert (decision.action, decision.requested_by) == ("enqueued", "stale")
    assert decision.reason == (
        f"BTC-lstm production version 3 is stale: its data ends "
        f"{(BUNDLED_END - pd.Timedelta(hours=200)).strftime('%Y-%m-%dT%H:%MZ')}, 200 h before "
        "the newest candle (ML_MODEL_MAX_AGE_HOURS=168)"
    )
    assert _queued(policy_settings) == [(decision.job_id, "BTC", "stale", PRIORITY_URGENT)]
    job = TrainingQueue(policy_settings).get_job(job_id=decision.job_id or "")
    assert job.reason == decision.reason
    # The next look finds it queued: skipped, still one job.
    again = _btc(policy.evaluate())
    assert again.action == "skipped"
    assert f"already has a queued job: {decision.job_id}" in again.reason
    assert len(_queued(policy_settings)) == 1


def test_24_hours_of_new_candles_queue_a_scheduled_retraining_at_the_lowest_priority(
    policy_settings: Settings, registry: Registry
) -> None:
    write_newer_candles(policy_settings.data_dir, hours=24)

    decision = _btc(_policy(policy_settings, registry).evaluate())

    assert (decision.action, decision.requested_by) == ("enqueued", "schedule")
    assert decision.reason.startswith("BTC-lstm: 24 h of new candles since the last training's")
    assert _queued(policy_settings) == [(decision.job_id, "BTC", "schedule", PRIORITY_LOWEST)]


def test_23_hours_of_new_candles_queue_nothing(
    policy_settings: Settings, registry: Registry
) -> None:
    write_newer_candles(policy_settings.data_dir, hours=23)

    decision = _btc(_policy(policy_settings, registry).evaluate())

    assert (decision.action, decision.job_id) == ("skipped", None)
    assert "23 h of new candles" in decision.reason
    assert "once there are 24 h" in decision.reason
    assert _queued(policy_settings) == []


def test_after_a_training_ended_the_next_waits_for_24_more_hours_of_candles(
    policy_settings: Settings, registry: Registry
) -> None:
    newest = pd.Timestamp(write_newer_candles(policy_settings.data_dir, hours=24))
    policy = _policy(policy_settings, registry)
    first = _btc(policy.evaluate())
    assert first.requested_by == "schedule"
    # It trained on every candle there is, and its challenger was rejected: production (the
    # registry) still ends where it did.
    _end_job(policy_settings, first.job_id or "", data_end=newest)
    assert TrainingQueue(policy_settings).get_job(job_id=first.job_id or "").data_end == int(
        newest.timestamp() * 1000
    )

    nothing_new = _btc(policy.evaluate())
    assert nothing_new.action == "skipped"
    assert nothing_new.reason.startswith("BTC-lstm: no new candles since the last training's")
    write_newer_candles(policy_settings.data_dir, hours=47)  # 23 h after that training's data
    assert _btc(policy.evaluate()).action == "skipped"
    assert _queued(policy_settings) == []

    write_newer_candles(policy_settings.data_dir, hours=48)
    second = _btc(policy.evaluate())
    assert (second.action, second.requested_by) == ("enqueued", "schedule")
    assert "24 h of new candles" in second.reason
    assert [job[0] for job in _queued(policy_settings)] == [second.job_id]


@pytest.mark.parametrize("hours", [24, 48, 72, 96, 100])
def test_no_training_is_queued_while_the_gate_would_have_too_few_unseen_rows(
    policy_settings: Settings, registry: Registry, hours: int
) -> None:
    """A refit production version learnt every candle through its data end: the trainings
    due at +24 h .. +96 h of new candles would be compared on fewer than ML_GATE_MIN_ROWS (100)
    rows it never learnt, and rejected after a full fit."""
    end = BUNDLED_END - hours * HOUR
    registry.production["BTC", "lstm"] = Production("3", data_end=end, fit_end=end)

    decision = _btc(_policy(policy_settings, registry).evaluate())

    assert decision.action == "skipped"
    assert f"only {hours - 1} candles with a known outcome after production version 3's" in (
        decision.reason
    )
    assert "fewer than the 100 the gate compares on (ML_GATE_MIN_ROWS)" in decision.reason
    assert _queued(policy_settings) == []


@pytest.mark.parametrize("hours", [101, 150])
def test_a_training_is_queued_once_the_gate_has_its_unseen_rows(
    policy_settings: Settings, registry: Registry, hours: int
) -> None:
    end = BUNDLED_END - hours * HOUR
    registry.production["BTC", "lstm"] = Production("3", data_end=end, fit_end=end)

    decision = _btc(_policy(policy_settings, registry).evaluate())

    assert (decision.action, decision.requested_by) == ("enqueued", "schedule")
    assert len(_queued(policy_settings)) == 1


def test_a_version_validated_by_live_candles_is_not_stale(
    policy_settings: Settings, registry: Registry
) -> None:
    """Its data ends 200 h back, but a live comparison kept it 10 h ago: due by schedule."""
    registry.production["BTC", "lstm"] = Production(
        "3", BUNDLED_END - 200 * HOUR, validated_through=BUNDLED_END - 10 * HOUR
    )

    decision = _btc(_policy(policy_settings, registry).evaluate())

    assert (decision.action, decision.requested_by) == ("enqueued", "schedule")


def test_a_slot_with_a_job_already_active_is_skipped_with_that_reason(
    policy_settings: Settings, registry: Registry
) -> None:
    write_newer_candles(policy_settings.data_dir, hours=24)
    mine = TrainingQueue(policy_settings).enqueue(pair="BTC", requested_by="cli").job_id

    decision = _btc(_policy(policy_settings, registry).evaluate())

    assert decision.action == "skipped"
    assert decision.reason.startswith(f"not queued: BTC:lstm already has a queued job: {mine}")
    assert "(due: BTC-lstm: 24 h of new candles" in decision.reason
    assert [job[0] for job in _queued(policy_settings)] == [mine]


def test_a_full_queue_is_skipped_with_that_reason(
    policy_settings: Settings, registry: Registry
) -> None:
    settings = policy_settings.model_copy(update={"max_queued_jobs": 1})
    write_newer_candles(settings.data_dir, hours=24)
    TrainingQueue(settings).enqueue(pair="ETH")

    decision = _btc(_policy(settings, registry).evaluate())

    assert decision.action == "skipped"
    assert "the training queue is full: 1 jobs queued" in decision.reason


def test_no_production_version_and_no_candles_are_skipped_with_their_reasons(
    policy_settings: Settings,
) -> None:
    decisions = {(d.pair, d.model_type): d for d in _policy(policy_settings, Registry()).evaluate()}

    assert set(decisions) == {("BTC", "lstm"), ("ETH", "lstm")}
    assert decisions["BTC", "lstm"].action == "skipped"
    assert decisions["BTC", "lstm"].reason == f"BTC-lstm: {NO_PRODUCTION}"
    assert decisions["ETH", "lstm"].action == "skipped"
    assert decisions["ETH", "lstm"].reason.startswith("no candles for ETH at 1h")
    assert _queued(policy_settings) == []


def test_decisions_are_visible_in_the_queue_status(
    policy_settings: Settings, registry: Registry
) -> None:
    write_newer_candles(policy_settings.data_dir, hours=24)
    decision = _btc(_policy(policy_settings, registry).evaluate())

    body = TrainingQueue(policy_settings).queue_status().to_json_dict()["queue"]["policy"]

    assert body["enabled"] is True
    assert [d["pair"] + "-" + d["modelType"] for d in body["decisions"]] == ["BTC-lstm", "ETH-lstm"]
    assert body["decisions"][0] == {
        "pair": "BTC",
        "modelType": "lstm",
        "decidedAt": decision.decided_at,
        "action": "enqueued",
        "requestedBy": "schedule",
        "reason": decision.reason,
        "jobId": decision.job_id,
    }
    job = TrainingQueue(policy_settings).get_job(job_id=decision.job_id or "").to_json_dict()
    assert (job["reason"], job["dataEnd"], job["requestedBy"]) == (
        decision.reason,
        None,
        "schedule",
    )


def test_a_decision_is_logged_only_when_it_changes(
    policy_settings: Settings, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    write_newer_candles(policy_settings.data_dir, hours=23)
    policy = _policy(policy_settings, registry)
    caplog.set_level(logging.INFO, logger="pipelines.queue.policy")

    for _ in range(3):
        policy.evaluate()

    lines = [r.getMessage() for r in caplog.records if "BTC-lstm: skipped" in r.getMessage()]
    assert len(lines) == 1
    assert "23 h of new candles" in lines[0]


def test_with_the_policy_off_nothing_is_queued(
    policy_settings: Settings, registry: Registry
) -> None:
    settings = policy_settings.model_copy(update={"retrain_policy": False})
    registry.production["BTC", "lstm"] = Production("3", BUNDLED_END - 500 * HOUR)
    write_newer_candles(settings.data_dir, hours=48)

    decisions = _policy(settings, registry).evaluate()

    assert {d.action for d in decisions} == {"off"}
    assert "ML_RETRAIN_POLICY=false" in decisions[0].reason
    assert _queued(settings) == []
    assert TrainingQueue(settings).queue_status().queue.policy.enabled is False


def test_the_policy_s_requesters_are_allowed(queue: TrainingQueue) -> None:
    assert set(REQUESTERS) == {"api", "cli", "bootstrap", "schedule", "stale", "drift"}
    job_id = queue.enqueue(pair="XMR", requested_by="drift", reason="  it drifted  ").job_id
    job = queue.get_job(job_id=job_id)
    assert (job.requested_by, job.reason) == ("drift", "it drifted")
    with pytest.raises(ValueError, match="requested_by 'feed': expected one of api, cli"):
        queue.enqueue(pair="RVN", requested_by="feed")


# --- the real registry ------------------------------------------------------------------------


def _register_production(settings: Settings, *, pair: str, data_range: str | None) -> str:
    """A run tagged like a training's, a registered version of it, production alias on it."""
    client = tracking.client_for(settings)
    experiment_id = tracking.ensure_training_experiment(client, settings)
    tags = {} if data_range is None else {tracking.TAG_DATA_RANGE: data_range}
    run = client.create_run(experiment_id, tags=tags)
    client.log_text(run.info.run_id, "a model", "model/README.txt")
    client.set_terminated(run.info.run_id)
    name = tracking.registered_model_name(pair, "lstm")
    client.create_registered_model(name)
    version = client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias(name, tracking.PRODUCTION_ALIAS, version.version)
    return str(version.version)


def _register_bundled(
    settings: Settings, tmp_path: Path, *, data_end: pd.Timestamp, fit_end: pd.Timestamp
) -> str:
    """A version whose source is a logged model holding a bundle's metadata (as a training
    logs it), production."""
    client = tracking.client_for(settings)
    experiment_id = tracking.ensure_training_experiment(client, settings)
    data_range = f"2020-01-01T00:00:00+00:00 .. {data_end.isoformat()}"
    run = client.create_run(experiment_id, tags={tracking.TAG_DATA_RANGE: data_range})
    model = client.create_logged_model(experiment_id, source_run_id=run.info.run_id)
    files = tmp_path / "bundle" / "artifacts"
    files.mkdir(parents=True)
    (files / "metadata.json").write_text(json.dumps({"fit_end": fit_end.isoformat()}))
    client.log_model_artifacts(model.model_id, str(files.parent))
    client.set_terminated(run.info.run_id)
    name = tracking.registered_model_name("BTC", "lstm")
    client.create_registered_model(name)
    # MLflow resolves a `models:/m-...` source through the process's tracking URI, which an
    # earlier test may have set: point it at this store for the call, then put it back.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(settings.tracking_uri)
    try:
        version = client.create_model_version(
            name, f"models:/{model.model_id}", run_id=run.info.run_id
        )
    finally:
        mlflow.set_tracking_uri(previous)
    client.set_registered_model_alias(name, tracking.PRODUCTION_ALIAS, version.version)
    return str(version.version)


def test_registry_data_end_reads_fit_end_and_validated_through(
    tracked_settings: Settings, tmp_path: Path
) -> None:
    """The worker's facts are the API's: the bundle's `fit_end`, the version's
    `tbml.validated_through` tag; through the policy, too few unseen rows queue nothing."""
    end = BUNDLED_END - 50 * HOUR
    version = _register_bundled(tracked_settings, tmp_path, data_end=end, fit_end=end)
    production_data_end = registry_data_end(tracked_settings)

    assert production_data_end("BTC", "lstm") == Production(version, end, fit_end=end)
    through = BUNDLED_END - 5 * HOUR
    client = tracking.client_for(tracked_settings)
    mark_validated(client, name="BTC-lstm", version=version, through_ms=_ms(through))
    mark_validated(client, name="BTC-lstm", version=version, through_ms=_ms(end))  # no step back
    assert production_data_end("BTC", "lstm") == Production(
        version, end, fit_end=end, validated_through=through
    )
    policy = RetrainingPolicy(
        tracked_settings,
        TrainingQueue(tracked_settings),
        store=CandleStore.from_settings(tracked_settings),
        production_data_end=production_data_end,
    )
    decision = _btc(policy.evaluate())
    assert decision.action == "skipped"
    assert "only 49 candles with a known outcome" in decision.reason


def _ms(stamp: pd.Timestamp) -> int:
    return int(stamp.timestamp() * 1000)


def test_registry_data_end_reads_the_production_version_s_data_range(
    tracked_settings: Settings,
) -> None:
    end = BUNDLED_END - pd.Timedelta(hours=200)
    version = _register_production(
        tracked_settings, pair="BTC", data_range=f"2020-01-01T00:00:00+00:00 .. {end.isoformat()}"
    )
    _register_production(tracked_settings, pair="XMR", data_range=None)
    production_data_end = registry_data_end(tracked_settings)

    assert production_data_end("BTC", "lstm") == Production(version, end)
    assert production_data_end("ETH", "lstm") is None
    with pytest.raises(
        ValueError, match=r"XMR-lstm version 1: its run \w+ has no 'data_range' tag"
    ):
        production_data_end("XMR", "lstm")

    # Through the policy: BTC is stale, ETH has no production version, XMR says why not.
    policy = RetrainingPolicy(
        tracked_settings,
        TrainingQueue(tracked_settings),
        store=CandleStore.from_settings(tracked_settings),
        production_data_end=production_data_end,
    )
    decisions = {d.pair: d for d in policy.evaluate() if d.model_type == "lstm"}
    assert (decisions["BTC"].action, decisions["BTC"].requested_by) == ("enqueued", "stale")
    assert "200 h before the newest candle" in decisions["BTC"].reason
    assert decisions["ETH"].reason == f"ETH-lstm: {NO_PRODUCTION}"
    assert decisions["XMR"].reason.startswith("could not read the production version of XMR-lstm")


def test_a_run_s_data_range_becomes_its_report_s_data_end(tracked_settings: Settings) -> None:
    client = tracking.client_for(tracked_settings)
    experiment_id = tracking.ensure_training_experiment(client, tracked_settings)
    tagged = client.create_run(
        experiment_id,
        tags={tracking.TAG_DATA_RANGE: "2023-01-01T00:00:00+00:00 .. 2023-12-30T18:00:00+00:00"},
    )
    bare = client.create_run(experiment_id, tags={tracking.TAG_DATA_RANGE: "yesterday"})

    report = tracking.read_report(tracked_settings, tagged.info.run_id)

    assert report.data_end == int(pd.Timestamp("2023-12-30T18:00:00Z").timestamp() * 1000)
    assert tracking.read_report(tracked_settings, bare.info.run_id).data_end is None
    with pytest.raises(ValueError, match=r"data_range 'yesterday' is not 'START \.\. END'"):
        tracking.parse_data_end("yesterday")


def test_a_slot_whose_challenger_is_being_decided_is_not_retrained(
    tracked_settings: Settings,
) -> None:
    end = BUNDLED_END - pd.Timedelta(hours=200)
    _register_production(
        tracked_settings, pair="BTC", data_range=f"2020-01-01T00:00:00+00:00 .. {end.isoformat()}"
    )
    client = tracking.client_for(tracked_settings)
    first = client.get_model_version("BTC-lstm", "1")
    second = str(
        client.create_model_version("BTC-lstm", str(first.source), run_id=first.run_id).version
    )
    # The second version is the challenger (the alias the gate sets), the first production.
    set_challenger(client, name="BTC-lstm", version=second, now_ms=now_ms())
    policy = RetrainingPolicy(
        tracked_settings,
        TrainingQueue(tracked_settings),
        store=CandleStore.from_settings(tracked_settings),
        production_data_end=registry_data_end(tracked_settings),
        challenger_of=registry_challenger(tracked_settings),
    )

    decision = _btc(policy.evaluate())

    assert decision.action == "skipped"
    assert decision.reason.startswith(
        f"BTC-lstm challenger version {second} is being decided on live candles"
    )
    assert "(due: BTC-lstm production version 1 is stale" in decision.reason
    assert _queued(tracked_settings) == []
    # Once it is decided (the alias removed), the due retraining is queued.
    client.delete_registered_model_alias("BTC-lstm", tracking.CHALLENGER_ALIAS)
    assert _btc(policy.evaluate()).action == "enqueued"
