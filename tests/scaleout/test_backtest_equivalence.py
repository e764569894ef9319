"""The backtest decides as the service does: the same candles give the same decisions.

A replay exchange runs in this process on a clock the test moves by hand: setting it one
interval on releases one candle. `tbml up` (the feed at that exchange, the scheduler, real
trainings as `mlflow run` children) runs beside it in lockstep: after each release the test
waits until the service has answered the candle, filled the previous candle's outcome, served
what the registry's aliases name, trained what it queued, and its policy chores have looked
twice since, before it releases the next. So a training's duration cannot change what the
service decides. Then `mlproject.backtest.replay` replays the same hours in-process (real
trainings into a tracking store of its own) and both must agree on every decision: the
trainings (who asked, on data up to when), the gate's outcomes, the challengers' promotions
and retirements with their reasons (numbers included), and each candle's answer (the version
that gave it, its signal and hold reasons).

The settings make every kind of decision happen within a day of candles: a retraining every
4 hours, a gate on 4 rows and a challenger decided on 3 realised candles, with a promotion
margin of 0.03 nats. The start and the margin were chosen where the replayed day holds a
rejected version, admitted challengers, promotions and a retirement, none of them decided by
an interval whose bound lies within 0.005 nats of the margin.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from pipelines.candles.replay import ReplayExchange, ReplayServer, prepare_replay_store
from pipelines.settings import Settings
from tests.conftest import BUNDLED, free_port
from tests.scaleout.conftest import BIN, Processes, Started, answers, wait_for
from tests.scaleout.test_lifecycle import Stream

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

HOUR_MS = 3_600_000
PAIR, MODEL_TYPE = "BTC", "lightgbm"
NAME = f"{PAIR}-{MODEL_TYPE}"
# The first replayed candle, counted from the newest bundled one; and how many are released.
START_FROM_END = 200
RELEASED = 23
# What decides, the same for the service and the backtest.
DECISIONS = {
    "ML_PAIRS": PAIR,
    "ML_ENABLED_MODELS": MODEL_TYPE,
    "ML_TRAINING_COOLDOWN": "0",
    # The bootstrap trains like every later training.
    "ML_MAX_ROWS": "3000",
    "ML_BOOTSTRAP_MAX_ROWS": "3000",
    "ML_EPOCHS": "100",
    "ML_BOOTSTRAP_EPOCHS": "100",
    "ML_VERDICT_FOLDS": "2",
    "ML_VERDICT_TEST_ROWS": "300",
    "ML_IMPORTANCE_ROWS": "0",
    "ML_GATE_MIN_ROWS": "4",
    "ML_CHALLENGER_MIN_OUTCOMES": "3",
    "ML_RETRAIN_INTERVAL_HOURS": "4",
    "ML_PROMOTION_MARGIN": "0.03",
    # Serve every signal, so the move gate's holds show in the answers.
    "ML_SERVE_UNPROVEN": "true",
}
# Chores look every few hundred ms; the policies are awaited twice per step.
CHORE_MS = "300"
POLICY_CHORES = ("retraining-policy", "challenger-policy")
# The gate's outcome as the queue and the registry name it -> as the backtest does.
GATE_KINDS = {"promoted": "production", "challenger": "admitted", "rejected": "rejected"}


def _service_env(root: Path, *, exchange_url: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "MLFLOW_"))}
    return {
        **env,
        **DECISIONS,
        "PORT": str(port),
        "ML_DATA_DIR": str(root / "data"),
        "ML_BUNDLED_DATA_DIR": str(root / "ohlcv"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "ML_ARTIFACT_ROOT": str(root / "mlruns"),
        "ML_DATABASE_URL": f"sqlite:///{root / 'service.db'}",
        "ML_EXCHANGE_URL": exchange_url,
        "ML_FEED": "true",
        "ML_FEED_DELAY": "0",
        "ML_FEED_MAX_WAIT": "0.2",
        "ML_CANDLE_WATCH_INTERVAL": CHORE_MS,
        "ML_OUTCOME_FILL_INTERVAL": CHORE_MS,
        "ML_MODEL_REFRESH_INTERVAL": CHORE_MS,
        "ML_POLICY_INTERVAL": CHORE_MS,
        "ML_CHALLENGER_INTERVAL": CHORE_MS,
        "ML_QUEUE_PROCESSING_INTERVAL": CHORE_MS,
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


def _ms(moment: pd.Timestamp) -> int:
    return int(moment.value // 1_000_000)


def _when(ms: int) -> str:
    return f"{pd.Timestamp(ms, unit='ms', tz='UTC'):%Y-%m-%dT%H:%MZ}"


@dataclass
class Lockstep:
    """Drives the replay's clock and watches the service; records what it decided."""

    client: httpx.Client
    registry: Any  # mlflow.MlflowClient of the service's store
    stream: Stream
    watch: list[Started]
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per version that left the challenger alias: (candle of the step, promoted | retired, why).
    decided: dict[str, tuple[int, str, str]] = field(default_factory=dict)

    # --- what the service shows --------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def idle(self) -> bool:
        """No training queued or running (every job seen is remembered)."""
        queue = self._get("/api/training/queue")["queue"]
        for job in queue["history"]["recent"]:
            self.jobs[job["id"]] = job
        return bool(queue["active"]["count"] == 0 and queue["queued"]["count"] == 0)

    def aliases(self) -> dict[str, str]:
        """The registry's aliases (`tbml up` serves once the bootstrap registered one)."""
        model = self.registry.get_registered_model(NAME)
        return {k: str(v) for k, v in model.aliases.items()}

    def loaded(self) -> dict[str, str]:
        """The versions the service has loaded, by alias."""
        entry = self._get(f"/api/models/{PAIR}/status")["individual"][MODEL_TYPE]
        found = {}
        if entry.get("hasModel"):
            found["production"] = str(entry["modelInfo"]["version"])
        if entry.get("challenger"):
            found["challenger"] = str(entry["challenger"]["modelInfo"]["version"])
        return found

    def _rows(self, *, alias: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._get(
            f"/api/predictions/{PAIR}/history", limit=20, alias=alias
        )["predictions"]
        return rows

    def predicted(self, candle: int) -> dict[str, str] | None:
        """The aliases when every loaded version has predicted `candle` (production's answer
        pushed, the challenger's shadow row stored) and they are the registry's; else None."""
        aliases = self.aliases()
        if self.loaded() != aliases:
            return None
        production = aliases.get("production")
        if (production, candle) not in {
            (m["modelVersion"], m["candleTime"]) for m in self.stream.messages
        }:
            return None
        challenger = aliases.get("challenger")
        if challenger is not None and (challenger, candle) not in {
            (r["modelVersion"], r["candleTime"]) for r in self._rows(alias="challenger")
        }:
            return None
        return aliases

    def realised(self, candle: int) -> bool:
        """Production's rows of `candle` have their outcome (up, down or a tie)."""
        rows = [r for r in self._rows(alias="production") if r["candleTime"] == candle]
        return bool(rows) and all(r["outcome"] is not None or r["tie"] for r in rows)

    def looked_twice(self) -> None:
        """Wait until each policy chore has finished a look that started after now."""
        since = {name: int(time.time() * 1000) for name in POLICY_CHORES}
        for _ in range(2):

            def looked() -> bool:
                background = self._get("/api/health")["background"]
                done = {n: background[n]["lastSuccess"] or 0 for n in POLICY_CHORES}
                if all(done[n] > since[n] for n in POLICY_CHORES):
                    since.update(done)
                    return True
                return False

            wait_for(looked, timeout=60, what="the policy chores' looks", watch=self.watch)

    # --- one step ----------------------------------------------------------------------------

    def settle(self, candle: int, *, previous: int | None) -> None:
        """Wait until the service is done with `candle`: answered, the previous candle's
        outcome filled, no training pending, the registry's versions loaded and predicting,
        and nothing changed over two looks of each policy chore."""
        began = time.monotonic()
        if previous is not None:
            wait_for(
                lambda: self.realised(previous),
                timeout=60,
                what=f"the outcome of {_when(previous)}",
                watch=self.watch,
            )
        while True:
            wait_for(self.idle, timeout=300, what="no training pending", watch=self.watch)
            aliases = wait_for(
                lambda: self.predicted(candle),
                timeout=120,
                what=f"the registry's versions served and predicting {_when(candle)}",
                watch=self.watch,
            )
            jobs = len(self.jobs)
            self.looked_twice()
            if self.idle() and self.predicted(candle) == aliases and len(self.jobs) == jobs:
                break
        self._note_decisions(candle)
        logger.info(
            "settled %s in %.1f s: %s, %d jobs",
            *(_when(candle), time.monotonic() - began, aliases, len(self.jobs)),
        )

    def _note_decisions(self, candle: int) -> None:
        from pipelines.tracking import TAG_CHALLENGER_OUTCOME, TAG_CHALLENGER_REASON

        for version in self.registry.search_model_versions(f"name = '{NAME}'"):
            tags = version.tags or {}
            outcome = tags.get(TAG_CHALLENGER_OUTCOME)
            if outcome is not None and str(version.version) not in self.decided:
                reason = str(tags.get(TAG_CHALLENGER_REASON))
                self.decided[str(version.version)] = (candle, outcome, reason)


# --- the comparison ------------------------------------------------------------------------


def _live_events(lockstep: Lockstep, hours: pd.DatetimeIndex) -> list[tuple[str, ...]]:
    """The service's decisions as the backtest lists them, (time, kind, version, reason): per
    hour, the challenger policy's, then a training and its gate (the lifecycle's order: no
    training starts while a challenger waits for its decision)."""
    events: list[tuple[str, ...]] = []
    jobs = sorted(lockstep.jobs.values(), key=lambda j: (j["queuedAt"], j["id"]))
    decided = sorted(lockstep.decided.items(), key=lambda d: int(d[0]))
    for hour in hours:
        at, ms = hour.isoformat(), _ms(hour)
        events += [(at, kind, v, why) for v, (candle, kind, why) in decided if candle == ms]
        for job in jobs:
            if job["dataEnd"] == ms:
                version = str(job["registeredVersion"])
                events.append((at, "trained", version, f"{job['requestedBy']}: {job['reason']}"))
                gate = GATE_KINDS.get(str(job["promotion"]), str(job["promotion"]))
                events.append((at, gate, version, str(job["promotionReason"])))
    return events


def _side_by_side(title: str, live: list[Any], replayed: list[Any]) -> str:
    lines = [f"{title} (service | backtest):"]
    for a, b in itertools.zip_longest(live, replayed):
        lines.append(f"  {'  ' if a == b else '≠ '}{a} | {b}")
    return "\n".join(lines)


def _backtest(root: Path, hours: pd.DatetimeIndex) -> Any:
    """`mlproject.backtest.replay` over `hours` with the service's settings, its trainings real
    and in-process, into a tracking store of its own."""
    from mlproject.backtest import mlflow_trainer, replay
    from mlproject.config import TrainConfig
    from mlproject.loading import load_candles
    from mlproject.tracking import client_for
    from pipelines.tracking import ensure_experiment

    values: dict[str, Any] = {
        **DECISIONS,
        "ML_DATA_DIR": str(root / "data"),
        "ML_BUNDLED_DATA_DIR": str(BUNDLED),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "ML_ARTIFACT_ROOT": str(root / "mlruns"),
        "ML_DATABASE_URL": f"sqlite:///{root / 'service.db'}",
    }
    settings = Settings(_env_file=None, **values)
    client = client_for(settings)
    experiment = ensure_experiment(client, name="backtest-equivalence", settings=settings)
    run = client.create_run(experiment, run_name="backtest")
    config = TrainConfig.from_settings(settings, pair=PAIR, model_type=MODEL_TYPE)
    return replay(
        pair=PAIR,
        model_type=MODEL_TYPE,
        start=hours[0],
        end=hours[-1],
        settings=settings,
        candles=load_candles(config, settings=settings),
        train=mlflow_trainer(
            parent_run_id=run.info.run_id, experiment_id=experiment, workdir=root / "bundles"
        ),
    )


def _run_service(
    processes: Processes, root: Path, *, start: pd.Timestamp, hours: pd.DatetimeIndex
) -> tuple[Lockstep, list[dict[str, Any]]]:
    """`tbml up` in lockstep with a replay from `start` through the last of `hours`; what it
    decided and every message it pushed. The service is stopped before this returns."""
    from mlflow import MlflowClient

    prepare_replay_store(BUNDLED, root / "ohlcv", pairs=[PAIR], start=start)
    now = [0.0]
    exchange = ReplayExchange.from_bundled(
        BUNDLED, pairs=[PAIR], start=start, interval_s=1.0, clock=lambda: now[0]
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    with ReplayServer(exchange) as server, httpx.Client(base_url=base, timeout=30) as client:
        service = processes.start(
            "service",
            [str(BIN / "tbml"), "up"],
            env=_service_env(root, exchange_url=server.url, port=port),
        )
        try:
            wait_for(lambda: answers(f"{base}/livez"), timeout=300, what="tbml up", watch=[service])

            def caught_up() -> bool:
                # The service judges a candle's age by the exchange's clock once its feed has
                # measured it; before that, by ours, where every replayed candle is years old.
                feed = client.get("/api/health").json()["feed"][PAIR]
                lag = feed["lagMs"]
                return bool(feed["state"] == "ok" and lag is not None and lag < HOUR_MS)

            wait_for(caught_up, timeout=60, what="the feed at the replay", watch=[service])
            # Its first message: the bootstrap version's answer to the newest known candle.
            stream = Stream(f"ws://127.0.0.1:{port}/ws/predictions?pairs={PAIR}")
            lockstep = Lockstep(
                client=client,
                registry=MlflowClient(tracking_uri=tracking, registry_uri=tracking),
                stream=stream,
                watch=[service],
            )
            try:
                lockstep.settle(_ms(hours[0]), previous=None)
                for k in range(1, len(hours)):
                    # Candle k - 1 after `start` closes at clock k (one interval per candle).
                    now[0] = k + 0.001
                    lockstep.settle(_ms(hours[k]), previous=_ms(hours[k - 1]))
            finally:
                stream.close()
        finally:
            Processes.stop(service)
    return lockstep, list(stream.messages)


def test_the_backtest_and_the_service_decide_alike_on_the_same_candles(
    processes: Processes, tmp_path: Path
) -> None:
    from pipelines.candles.validate import read_candle_file

    bundled = read_candle_file(BUNDLED / f"{PAIR}-USDT_1h.csv.gz")
    start = bundled.index[-START_FROM_END]
    # The service knows the candles before `start` and bootstraps on the newest of them;
    # hour k >= 1 is the k-th candle released.
    hours = pd.date_range(start - pd.Timedelta(hours=1), periods=RELEASED + 1, freq="1h")
    began = time.monotonic()
    lockstep, messages = _run_service(processes, tmp_path / "service", start=start, hours=hours)
    live_s = time.monotonic() - began
    replayed = _backtest(tmp_path / "backtest", hours)
    logger.info(
        "service in lockstep %.0f s (trainings %s s), backtest %.0f s",
        *(live_s, [j["duration"] // 1000 for j in lockstep.jobs.values()]),
        time.monotonic() - began - live_s,
    )

    # The decisions: every training (its version, numbered in training order on both sides,
    # rejected ones too), its gate's outcome, and each challenger's promotion or retirement.
    live = _live_events(lockstep, hours)
    expected = [(e.time.isoformat(), e.kind, str(e.version), e.reason) for e in replayed.events]
    decisions = [e[:3] for e in live]
    expected_decisions = [e[:3] for e in expected]
    assert decisions == expected_decisions, _side_by_side(
        "decisions", decisions, expected_decisions
    )
    kinds = {kind for _, kind, _ in decisions}
    assert {"production", "admitted", "rejected", "promoted", "retired"} <= kinds, kinds
    # Their reasons, numbers and all: the same rows and probabilities on both sides. The
    # bootstrap's training is the exception: `tbml up` queues it in words of its own.
    reasons = [e[3] for e in live[1:]]
    expected_reasons = [e[3] for e in expected[1:]]
    assert reasons == expected_reasons, _side_by_side("reasons", reasons, expected_reasons)

    # Who asked for each training and the data it read.
    jobs = sorted(lockstep.jobs.values(), key=lambda j: (j["queuedAt"], j["id"]))
    asked = [(j["requestedBy"], _when(j["dataEnd"]), j["status"]) for j in jobs]
    wanted = [
        (e.reason.split(":", 1)[0], _when(_ms(e.time)), "succeeded")
        for e in replayed.events
        if e.kind == "trained"
    ]
    assert asked == wanted, _side_by_side("trainings", asked, wanted)

    # The registry agrees with the queue: the gate's outcome and the challenger's fate.
    from pipelines.tracking import TAG_CHALLENGER_OUTCOME, TAG_CHALLENGER_SINCE, TAG_PROMOTION

    registry = lockstep.registry
    fates = []
    for version in sorted(registry.search_model_versions(f"name = '{NAME}'"), key=_number):
        tags = version.tags or {}
        admitted = TAG_CHALLENGER_SINCE in tags
        gate = "admitted" if admitted else GATE_KINDS[tags[TAG_PROMOTION]]
        fates.append((str(version.version), gate, tags.get(TAG_CHALLENGER_OUTCOME)))
    decided = {e.version: e.kind for e in replayed.events if e.kind in ("promoted", "retired")}
    replayed_fates = [
        (v.name, "admitted" if v.gate == "challenger" else v.gate, decided.get(v.name))
        for v in replayed.versions
    ]
    assert fates == replayed_fates, _side_by_side("versions", fates, replayed_fates)

    # Each candle's answer: the first pushed for it (a version served later re-predicts the
    # newest candle; the backtest records the answer given when the candle closed).
    first: dict[int, dict[str, Any]] = {}
    for m in messages:
        first.setdefault(m["candleTime"], m)
    answered = [
        (_when(_ms(h)), _version(first.get(_ms(h))), *_answer(first.get(_ms(h)))) for h in hours
    ]
    replayed_answers = [
        (_when(_ms(h)), serving, s.signal, list(s.held_by))
        for h, serving, s in zip(hours, replayed.serving, replayed.signals, strict=True)
    ]
    assert answered == replayed_answers, _side_by_side("answers", answered, replayed_answers)
    assert any(a[3] for a in answered), "no answer was held: the move gate never showed"


def _number(version: Any) -> int:
    return int(version.version)


def _version(message: dict[str, Any] | None) -> str | None:
    return None if message is None else str(message["modelVersion"])


def _answer(message: dict[str, Any] | None) -> tuple[str | None, list[str] | None]:
    if message is None:
        return None, None
    return message["prediction"]["signal"], list(message["holdReasons"])
