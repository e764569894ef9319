"""`TrainingScheduler`: the scheduler a process runs (the API's lifespan, or `tbml worker`).

Two chores (`pipelines.periodic.Chores`) take and renew the dispatch lease (a database row) and
take over when it is newly held; both survive their exceptions and retry with backoff, and their
state is in `background()` (health shows it). Only while this process
holds it does its APScheduler run: a second scheduler started by mistake waits on standby and
never dispatches, and takes over (recovering the crashed holder's training) once the lease
expires. APScheduler keeps the dispatcher tick and the retry triggers in its SQLAlchemy job
store, so they survive a restart. Leader chores run only while the lease is held: the queue's
retention, the retraining policy (pipelines.queue.policy: it queues the retrainings that new
data calls for), and whatever the service adds with `add_leader_chore`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Self

from pipelines import tracking
from pipelines.candles.store import CandleStore
from pipelines.db import SQLITE_BUSY_TIMEOUT_S, get_engine, is_sqlite, migrate, read_session
from pipelines.periodic import Chores, ChoreStatus
from pipelines.queue import jobs, lease, retention, store
from pipelines.queue.api import TrainingQueue
from pipelines.queue.clock import now_ms
from pipelines.queue.dispatcher import Dispatcher
from pipelines.queue.policy import (
    ChallengerOf,
    ProductionDataEnd,
    RetrainingPolicy,
    registry_challenger,
    registry_data_end,
)
from pipelines.queue.schemas import JobView
from pipelines.settings import Settings

logger = logging.getLogger(__name__)

DISPATCH_JOB_ID = "tbml-dispatch"
RETRY_JOB_PREFIX = "tbml-retry-"
# The interval retraining jobs of earlier versions; removed from old job stores at takeover.
RETRAIN_JOB_PREFIX = "tbml-retrain-"
LEASE_CHORE = "lease"
TAKEOVER_CHORE = "takeover"
RETENTION_CHORE = "queue-retention"
RETENTION_INTERVAL_S = 3600.0
POLICY_CHORE = "retraining-policy"
_OWN_CHORES = (LEASE_CHORE, TAKEOVER_CHORE, RETENTION_CHORE, POLICY_CHORE)


def new_worker_id() -> str:
    """`host:pid:random`: unique per scheduler instance, readable in the lease row."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class TrainingScheduler:
    """Runs the queue: `start()` it with the process, `shutdown()` it at exit."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str | None = None,
        production_data_end: ProductionDataEnd | None = None,
        challenger_of: ChallengerOf | None = None,
    ) -> None:
        """`production_data_end(pair, model_type)`: the production version and where its data
        ends, for the retraining policy; by default read from the MLflow registry
        (`registry_data_end`). The API passes one reading its model cache (no MLflow import).
        `challenger_of(pair, model_type)`: the slot's challenger version, likewise
        (`registry_challenger` by default).
        """
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.jobstore_url = settings.scheduler_database_url or settings.database_url
        self.key = jobs.deployment_key(self.jobstore_url)
        self.queue = TrainingQueue(settings, on_change=self.wake)
        self.dispatcher = Dispatcher(
            settings,
            worker_id=self.worker_id,
            holds_lease=self._holds_now,
            schedule_retry=self._schedule_retry,
            on_finished=self._finished,
            on_child_exit=self.wake,
        )
        self.policy = RetrainingPolicy(
            settings,
            self.queue,
            store=CandleStore.from_settings(settings),
            production_data_end=production_data_end or registry_data_end(settings),
            challenger_of=challenger_of or registry_challenger(settings),
        )
        self._leader_chores: dict[str, tuple[Callable[[], object], float]] = {}
        self._callbacks: list[Callable[[JobView], None]] = []
        self._holds = False
        self._dispatching = False
        self._migrated = False
        self._lease_until = 0.0  # time.monotonic() seconds: no other host's clock involved
        self._stop = threading.Event()
        self._chores: Chores | None = None
        if is_sqlite(settings.database_url) and (
            settings.scheduler_lease_ms <= SQLITE_BUSY_TIMEOUT_S * 1000 * 3
        ):
            logger.warning(
                "ML_SCHEDULER_LEASE=%d ms is under three times the SQLite busy timeout (%g s): "
                "a renewal waiting on a writer could outlast the lease",
                settings.scheduler_lease_ms,
                SQLITE_BUSY_TIMEOUT_S,
            )
        # Held while taking over (recovery, starting APScheduler) or standing down, so the two
        # never interleave; the lease thread itself only renews and never waits on a takeover.
        self._transition = threading.RLock()
        self._scheduler: Any = None
        self._jobstore: Any = None
        self._state = threading.Lock()
        self._wake_pending = threading.Event()
        self._in_tick = False

    # --- public ----------------------------------------------------------------------------

    @property
    def holds_lease(self) -> bool:
        """Whether this scheduler is the one that dispatches."""
        return self._holds

    def background(self) -> dict[str, ChoreStatus]:
        """The state of the chores: lease, takeover, queue retention, retraining policy and
        the leader chores added (empty before `start()`)."""
        return self._chores.statuses() if self._chores is not None else {}

    def on_training_finished(self, callback: Callable[[JobView], None]) -> None:
        """Call `callback(job)` in the scheduler's thread each time a job ends for good.

        The service registers its model-cache refresh here; `job.registered_version` and
        `job.promotion` say whether anything changed. Exceptions are logged, never raised.
        """
        self._callbacks.append(callback)

    def add_leader_chore(self, name: str, action: Callable[[], object], interval_s: float) -> None:
        """Run `action()` every `interval_s` seconds, but only while this scheduler holds the
        dispatch lease (one process of the deployment does it); failures retry with backoff and
        show in `background()`. Before `start()` it is added when the chores start.
        """
        if name in _OWN_CHORES or name in self._leader_chores:
            raise ValueError(
                f"chore {name!r} exists already; taken: "
                f"{', '.join(sorted({*_OWN_CHORES, *self._leader_chores}))}"
            )
        if not interval_s > 0:
            raise ValueError(f"interval_s of chore {name!r} must be > 0, got {interval_s!r}")
        self._leader_chores[name] = (action, interval_s)
        if self._chores is not None:
            self._chores.add(name, self._while_leading(action), interval_s=interval_s)

    def start(self) -> Self:
        """Migrate the database, try for the lease, and keep trying (or renewing) in a thread.

        When the lease is free, this returns once the takeover is done (orphaned trainings
        recovered, APScheduler running); the lease is renewed meanwhile. With the database
        unreachable this returns at once; the lease chore migrates and takes over once it is back.
        """
        if self.jobstore_url != self.settings.database_url:
            get_engine(self.jobstore_url)  # creates the SQLite file's directory
        self._stop.clear()
        period_s = self.settings.scheduler_lease_ms / 3 / 1000
        # A thread per chore, up to 8: a slow policy look or leader chore (the registry, the
        # exchange) must never leave the lease chore waiting for a thread to renew in.
        self._chores = Chores(
            retry_base_s=min(1.0, period_s / 2), retry_cap_s=period_s, max_workers=8
        )
        self._chores.add(LEASE_CHORE, self._lease_tick, interval_s=period_s)
        self._chores.add(TAKEOVER_CHORE, self._takeover_tick, interval_s=period_s)
        self._chores.add(RETENTION_CHORE, self._retention_tick, interval_s=RETENTION_INTERVAL_S)
        self._chores.add(
            POLICY_CHORE,
            self._while_leading(self.policy.evaluate),
            interval_s=self.settings.policy_interval_ms / 1000,
        )
        for name, (action, interval_s) in self._leader_chores.items():
            self._chores.add(name, self._while_leading(action), interval_s=interval_s)
        try:
            self._migrate_once()
            held = self._renew()
        except Exception as error:
            logger.error("scheduler %s starts without the database: %s", self.worker_id, error)
            self._chores.record(LEASE_CHORE, error)
            self._chores.start()
            return self
        self._chores.record(LEASE_CHORE, None)
        self._chores.start()
        if held:
            self._try_take_over()  # on failure the takeover chore tries again
        else:
            state = lease.current(self.settings.database_url)
            logger.warning(
                "standby: scheduler %s holds the dispatch lease (until %d); this one (%s) will "
                "not dispatch while it does",
                state.holder,
                state.expires_at,
                self.worker_id,
            )
        return self

    def shutdown(self) -> None:
        """Stop dispatching: interrupt (and requeue) a running training, release the lease."""
        self._stop.set()
        if self._chores is not None:
            self._chores.shutdown(wait=True)
        with self._transition:
            self._dispatching = False
            if self._scheduler is not None:
                self._scheduler.shutdown(wait=True)
                self._scheduler = None
            jobs.unregister(self.key, self)
            self.dispatcher.abandon("the scheduler shut down during the training")
            if self._holds:
                try:
                    lease.release(self.settings.database_url, holder=self.worker_id)
                except Exception as error:  # it expires on its own
                    logger.warning("could not release the dispatch lease: %s", error)
                self._holds = False
        logger.info("training scheduler %s stopped", self.worker_id)

    def wake(self) -> None:
        """Run the dispatcher now rather than at its next tick (after a change or a child exit)."""
        self._wake_pending.set()
        with self._state:
            if self._in_tick:
                return  # the running tick sees the flag and goes round again
        scheduler = self._scheduler
        if scheduler is None or not self._holds:
            return
        try:
            scheduler.modify_job(DISPATCH_JOB_ID, next_run_time=datetime.now(UTC))
        except Exception:
            logger.debug("wake ignored: the scheduler is stopping", exc_info=True)

    def tick(self) -> None:
        """The dispatcher job's body: tick until no wake-up arrived during the last one."""
        with self._state:
            self._in_tick = True
        try:
            while True:
                self._wake_pending.clear()
                self.dispatcher.tick()
                with self._state:
                    if not self._wake_pending.is_set() or self._stop.is_set():
                        self._in_tick = False
                        return
        except BaseException:
            with self._state:
                self._in_tick = False
            raise

    # --- lease -----------------------------------------------------------------------------

    def _retention_tick(self) -> None:
        """Old ended jobs, attempts and logs go (pipelines.queue.retention); one pruner per
        deployment: only the lease holder prunes."""
        if self._holds:
            retention.prune(self.settings, now=now_ms())

    def _while_leading(self, action: Callable[[], object]) -> Callable[[], None]:
        """`action`, run only while we hold the lease (a standby scheduler skips it)."""

        def run() -> None:
            if self._holds_now():
                action()

        return run

    def _holds_now(self) -> bool:
        """Whether we hold the lease and it has not run out (the dispatcher's guard)."""
        return self._holds and time.monotonic() < self._lease_until

    def _migrate_once(self) -> None:
        if not self._migrated:
            migrate(self.settings)
            self._migrated = True

    def _lease_tick(self) -> None:
        """The lease chore: renew (or take) the lease; hand a new tenure to the takeover chore."""
        was_holding = self._holds
        try:
            self._migrate_once()
            held = self._renew()
        finally:
            if was_holding and not self._holds:
                self._lost()
        if held and not was_holding and self._chores is not None:
            # Taking over can take long (importing MLflow, a slow tracking server, killing an
            # orphaned training); it runs as its own chore so renewal goes on meanwhile, or the
            # lease would run out under us and a standby scheduler would take over too.
            self._chores.trigger(TAKEOVER_CHORE)

    def _takeover_tick(self) -> None:
        """The takeover chore: dispatch while we hold the lease (a failed takeover retries)."""
        if self._holds and not self._dispatching:
            self._take_over()

    def _try_take_over(self) -> bool:
        try:
            self._take_over()
        except Exception as error:
            logger.exception("takeover failed; the takeover chore retries")
            if self._chores is not None:
                self._chores.record(TAKEOVER_CHORE, error)
            return False
        return True

    def _renew(self) -> bool:
        """Take or renew the lease (one UPDATE, the database's clock); whether we hold it now.

        A database error is raised (the lease chore records it and retries soon), but it is not
        a lost lease: ours holds until it would have expired, and no one can take it before.
        """
        started = time.monotonic()
        try:
            held = lease.acquire(
                self.settings.database_url,
                holder=self.worker_id,
                ttl_ms=self.settings.scheduler_lease_ms,
            )
        except Exception:
            self._holds = self._holds and time.monotonic() < self._lease_until
            raise
        if held:
            self._lease_until = started + self.settings.scheduler_lease_ms / 1000
        if held and not self._holds:
            logger.info("scheduler %s holds the dispatch lease", self.worker_id)
        self._holds = held
        return held

    def _take_over(self) -> None:
        """Recover what a stopped scheduler left training, then start dispatching."""
        with self._transition:
            if not self._holds or self._stop.is_set() or self._dispatching:
                return
            if self._has_work():
                self._warm_tracking()
            recovered = self.dispatcher.recover()
            if recovered:
                logger.warning("recovered jobs left training by a stopped scheduler: %s", recovered)
            if not self._holds or self._stop.is_set():
                return  # lost while recovering: `_lost` has stood down already
            if self._scheduler is None:
                self._scheduler = self._build_scheduler()
                self._scheduler.start(paused=True)
                jobs.register(self.key, self)
                self._sync_jobs()
                self._scheduler.resume()
            else:
                jobs.register(self.key, self)
                self._scheduler.resume()
            self._dispatching = True
        self.wake()

    def _has_work(self) -> bool:
        with read_session(self.settings.database_url) as session:
            return bool(store.training_jobs(session) or store.queued_in_order(session))

    def _warm_tracking(self) -> None:
        # With jobs waiting, import MLflow and open its store now rather than inside the first
        # dispatcher tick (it takes seconds). With none, leave it to the first dispatch: an API
        # process that runs the scheduler then stays without MLflow (about 70 MB) until it
        # trains something.
        try:
            tracking.ensure_training_experiment(tracking.client_for(self.settings), self.settings)
        except Exception:
            logger.exception("the MLflow tracking store is not reachable; dispatch will retry")

    def _lost(self) -> None:
        logger.error("scheduler %s lost the dispatch lease; standing by", self.worker_id)
        with self._transition:
            self._dispatching = False
            if self._scheduler is not None:
                self._scheduler.pause()
            self.dispatcher.abandon("the scheduler lost its dispatch lease during the training")

    # --- APScheduler -----------------------------------------------------------------------

    def _build_scheduler(self) -> Any:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        self._jobstore = SQLAlchemyJobStore(engine=get_engine(self.jobstore_url))
        return BackgroundScheduler(
            jobstores={"default": self._jobstore},
            # One thread: ticks and retries never run concurrently. The
            # tick never waits for a training, so one thread is never held up by one.
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            timezone=UTC,
        )

    def _sync_jobs(self) -> None:
        """Put the dispatcher in the job store, as configured; drop old retraining jobs."""
        from apscheduler.triggers.interval import IntervalTrigger

        interval_s = self.settings.queue_processing_interval_ms / 1000
        self._scheduler.add_job(
            jobs.DISPATCH,
            trigger=IntervalTrigger(seconds=interval_s, timezone=UTC),
            args=[self.key],
            id=DISPATCH_JOB_ID,
            name="training dispatcher",
            replace_existing=True,
            # coalesce: ticks missed while the process was down (or busy) run once, not N
            # times. max_instances=1: a tick never overlaps the previous one. A tick later than
            # two intervals is dropped: the next one is as good and comes sooner.
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(2 * interval_s)),
        )
        self._remove_interval_retraining()

    def _remove_interval_retraining(self) -> None:
        """Delete the `tbml-retrain-*` interval jobs earlier versions stored (the retraining
        policy replaces them): by id, in SQL, since their function no longer exists to load."""
        from sqlalchemy import delete

        table = self._jobstore.jobs_t
        with self._jobstore.engine.begin() as connection:
            result = connection.execute(
                delete(table).where(table.c.id.like(f"{RETRAIN_JOB_PREFIX}%"))
            )
        if result.rowcount:
            logger.info(
                "removed %d interval retraining job(s) of an earlier version from the job store; "
                "the retraining policy decides retrainings now",
                result.rowcount,
            )

    def _schedule_retry(self, job_id: str, at_ms: int) -> None:
        """A date job that dispatches when the backoff ends (the tick would find it anyway)."""
        from apscheduler.triggers.date import DateTrigger

        if self._scheduler is None:
            return
        self._scheduler.add_job(
            jobs.RETRY,
            trigger=DateTrigger(run_date=datetime.fromtimestamp(at_ms / 1000, UTC)),
            args=[self.key, job_id],
            id=f"{RETRY_JOB_PREFIX}{job_id}",
            name=f"retry {job_id}",
            replace_existing=True,
            # However late (the process was down at the retry time), a retry still runs.
            coalesce=True,
            misfire_grace_time=None,
        )

    def _finished(self, job: JobView) -> None:
        for callback in list(self._callbacks):
            try:
                callback(job)
            except Exception:
                logger.exception("training-finished callback %r failed", callback)
