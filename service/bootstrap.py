"""`tbml up` (what `make run` runs): migrate, train what has no production model, then serve.

On a fresh clone the registry is empty, so every configured pair and enabled model type gets a
short "bootstrap" training (`ML_BOOTSTRAP_EPOCHS`, `ML_BOOTSTRAP_MAX_ROWS`): a job on the
training queue (`requestedBy: bootstrap`), so it is exactly any other training (an MLflow
Project run of the `train` entry point, its parameters, the registered version, the promotion
gate) and waits its turn: with a `tbml worker` already running, that worker trains it and no two
trainings ever run at once. `tbml up` runs a scheduler of its own meanwhile (on standby while
another holds the dispatch lease) and shows each job's progress from its row and its run's
per-epoch metrics. A failed training is reported with its log and the API starts anyway,
answering the fallback for that pair (the queue retries the job). Once every model has a
production version, `tbml up` only migrates and serves, in seconds.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipelines.redact import redact
from pipelines.settings import NETWORK_TYPES, PROJECT_ROOT, TABULAR_TYPES, Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipelines.queue.api import TrainingQueue
    from pipelines.queue.schemas import JobView

logger = logging.getLogger(__name__)

REQUESTED_BY = "bootstrap"
# Bootstrap jobs go before scheduled retrainings and after nothing a user asked for first.
BOOTSTRAP_PRIORITY = 3
_POLL_S = 1.0
_CANCEL_WAIT_S = 15.0


@dataclass(frozen=True)
class Progress:
    """Where one bootstrap training stands, read back from its job row and MLflow run."""

    stage: str  # queued | starting | fitting | finishing
    epochs: int  # most epochs (early stopping may end sooner)
    # Per finished epoch, in order: loss, val_loss, accuracy, val_accuracy.
    history: tuple[dict[str, float], ...]
    elapsed_s: float
    waiting_for: str | None = None  # the job training now, while this one is queued

    @property
    def epoch(self) -> int:
        """Epochs finished so far."""
        return len(self.history)


@dataclass(frozen=True)
class TrainingResult:
    """How one bootstrap training ended (its first attempt, or the job as a whole)."""

    pair: str
    model_type: str
    job_id: str | None
    run_id: str | None
    returncode: int
    elapsed_s: float
    log_path: Path | None
    status: str = ""
    version: str | None = None
    promotion: str | None = None
    reason: str | None = None
    production: str | None = None  # the version aliased production afterwards
    beats_baseline: bool | None = None
    error: str = ""
    epochs_seen: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.production is not None


def _client(settings: Settings) -> MlflowClient:
    from pipelines.tracking import client_for

    return client_for(settings)


def missing_production_models(settings: Settings, *, client: Any) -> list[tuple[str, str]]:
    """The (pair, model type) slots the service would serve that have no production version:
    the first enabled type's of every pair first (what a request without `?model=` serves)."""
    from pipelines.tracking import production_version, registered_model_name

    return [
        (pair, model_type)
        for model_type in settings.enabled_models
        for pair in settings.pairs
        if production_version(client, name=registered_model_name(pair, model_type)) is None
    ]


def bootstrap_params(settings: Settings, model_type: str = "lstm") -> dict[str, object]:
    """The job's parameters: a network's bootstrap budget; every other one is the setting's
    value. A tabular type is cheap enough to learn every candle, and needs them for a verdict
    that can see its edge (its walk-forward folds)."""
    if model_type in TABULAR_TYPES:
        return {}
    return {"epochs": settings.bootstrap_epochs, "max_rows": settings.bootstrap_max_rows}


def enqueue_bootstrap(
    queue: TrainingQueue, settings: Settings, *, pair: str, model_type: str
) -> str:
    """Queue a bootstrap job for the slot; a job already active for it is waited for instead."""
    from pipelines.queue.errors import DuplicateJobError

    try:
        result = queue.enqueue(
            pair=pair,
            model_type=model_type,
            params=bootstrap_params(settings, model_type),
            priority=BOOTSTRAP_PRIORITY,
            requested_by=REQUESTED_BY,
        )
    except DuplicateJobError as exc:
        return exc.existing.id
    return result.job_id


@contextlib.contextmanager
def queue_scheduler(settings: Settings) -> Iterator[TrainingQueue]:
    """This process's training scheduler, running while the bootstrap jobs are watched."""
    from pipelines.queue.runtime import TrainingScheduler

    scheduler = TrainingScheduler(settings).start()
    try:
        yield scheduler.queue
    finally:
        scheduler.shutdown()


def _run_progress(client: Any, run_id: str) -> tuple[str, tuple[dict[str, float], ...]]:
    history = {
        name: {m.step: float(m.value) for m in client.get_metric_history(run_id, name)}
        for name in ("epoch_seconds", "loss", "val_loss", "accuracy", "val_accuracy")
    }
    done = sorted(history.pop("epoch_seconds"))
    per_epoch = tuple({k: v[step] for k, v in history.items() if step in v} for step in done)
    fitted = "fit_seconds" in client.get_run(run_id).data.metrics
    return ("finishing" if fitted else ("fitting" if done else "starting")), per_epoch


def _progress(
    queue: TrainingQueue, client: Any, job: JobView, *, epochs: int, started: float
) -> Progress:
    elapsed = time.monotonic() - started
    if job.status == "queued" or not job.run_id:
        status = queue.queue_status().queue
        others = [active.id for active in status.active.jobs if active.id != job.id]
        if status.paused:
            others = [f"the paused queue ({status.paused_reason or 'emergency stop'})"]
        return Progress("queued", epochs, (), elapsed, waiting_for=others[0] if others else None)
    stage, history = _run_progress(client, job.run_id)
    return Progress(stage, epochs, history, elapsed)


def _first_attempt_failed(job: JobView) -> bool:
    return any(a.outcome == "failed" for a in job.attempt_history)


def watch_job(
    settings: Settings,
    queue: TrainingQueue,
    job_id: str,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    poll_s: float = _POLL_S,
) -> TrainingResult:
    """Follow a bootstrap job until it ends or an attempt fails; never raises for a failure.

    Ctrl-C cancels the job (the queue kills its training and marks the run KILLED) and then
    propagates.
    """
    from pipelines.queue.runner import log_tail
    from pipelines.tracking import production_version, registered_model_name

    client = _client(settings)
    started = time.monotonic()
    seen: list[int] = []
    try:
        while True:
            job = queue.get_job(job_id=job_id)
            ended = job.status not in ("queued", "training") or _first_attempt_failed(job)
            with contextlib.suppress(Exception):  # a busy store must not stop the watch
                progress = _progress(
                    queue, client, job, epochs=int(job.params.get("epochs", 0)), started=started
                )
                seen.extend(range(len(seen) + 1, progress.epoch + 1))
                if on_progress is not None:
                    on_progress(progress)
            if ended:
                break
            time.sleep(poll_s)
    except BaseException:
        _cancel(queue, job_id)
        raise
    attempt = job.attempt_history[0] if job.attempt_history else None
    log_path = _attempt_log(settings, job_id, attempt.attempt if attempt else 1)
    succeeded = job.status == "succeeded"
    if succeeded:
        returncode, error = 0, ""
    else:
        code = attempt.exit_code if attempt is not None else None
        returncode = code if code is not None and code != 0 else -1
        error = (attempt.error if attempt else None) or job.error or log_tail(log_path)
    return TrainingResult(
        job.pair,
        job.model_type,
        job.id,
        job.run_id or (attempt.run_id if attempt else None),
        returncode,
        time.monotonic() - started,
        log_path,
        status=job.status,
        version=job.registered_version,
        promotion=job.promotion,
        reason=job.promotion_reason,
        production=production_version(client, name=registered_model_name(job.pair, job.model_type)),
        beats_baseline=job.beats_baseline,
        error=error,
        epochs_seen=seen,
    )


def _attempt_log(settings: Settings, job_id: str, attempt: int) -> Path | None:
    from pipelines.queue.runner import log_dir

    path = log_dir(settings) / f"{job_id}.attempt-{attempt}.log"
    return path if path.exists() else None


def _cancel(queue: TrainingQueue, job_id: str) -> None:
    from pipelines.queue.errors import QueueError

    with contextlib.suppress(QueueError):
        queue.cancel(job_id=job_id, reason="tbml up was interrupted")
    deadline = time.monotonic() + _CANCEL_WAIT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(QueueError):
            if queue.get_job(job_id=job_id).status not in ("queued", "training"):
                return
        time.sleep(0.2)


def train_slot(
    settings: Settings,
    *,
    pair: str,
    model_type: str,
    on_progress: Callable[[Progress], None] | None = None,
    poll_s: float = _POLL_S,
) -> TrainingResult:
    """Queue one bootstrap training and follow it, with this process's scheduler running."""
    with queue_scheduler(settings) as queue:
        job_id = enqueue_bootstrap(queue, settings, pair=pair, model_type=model_type)
        return watch_job(settings, queue, job_id, on_progress=on_progress, poll_s=poll_s)


# --- the command ---------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(PROJECT_ROOT))
    return str(path)


class _Reporter:
    """Prints a line per epoch and per stage; on a terminal also a ticking elapsed time."""

    def __init__(self, label: str, *, network: bool = True) -> None:
        self.label = label
        # What the child does before its first epoch: a network also starts TensorFlow.
        self.starting = (
            "loading candles, features, starting TensorFlow"
            if network
            else "loading candles, features, fitting"
        )
        self.stage = ""
        self.epochs_shown = 0
        self.live = sys.stderr.isatty()

    def __call__(self, progress: Progress) -> None:
        clock = f"[{_clock(progress.elapsed_s)}]"
        changed = False
        if progress.stage == "queued" and not self.stage:
            behind = f" behind {progress.waiting_for}" if progress.waiting_for else ""
            self.line(f"{self.label}  queued{behind}  {clock}")
            changed = True
        if progress.stage == "starting" and self.stage in ("", "queued"):
            self.line(f"{self.label}  {self.starting}  {clock}")
            changed = True
        # A poll may find several new epochs (or the end of the fit) at once: show each.
        for number, metrics in enumerate(progress.history, start=1):
            if number > self.epochs_shown:
                values = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                self.line(f"{self.label}  epoch {number}/{progress.epochs}  {values}  {clock}")
                self.epochs_shown = number
                changed = True
        if progress.stage == "finishing" and self.stage != "finishing":
            self.line(f"{self.label}  evaluating, exporting ONNX, registering  {clock}")
            changed = True
        self.stage = progress.stage
        if self.live and not changed:
            sys.stderr.write(f"\r{self.label}  {clock}")
            sys.stderr.flush()

    def line(self, text: str) -> None:
        prefix = "\r\033[K" if self.live else ""
        typer.echo(prefix + text, err=True)


def _budget(settings: Settings) -> str:
    rows = settings.bootstrap_max_rows
    candles = f"the newest {rows:,} candles" if rows else "all candles"
    epochs = settings.bootstrap_epochs
    return (
        f"networks: {epochs} epoch{'s' if epochs != 1 else ''} at most on {candles}; "
        "other types: every candle"
    )


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _outcome(result: TrainingResult) -> str:
    if not result.ok:
        return f"FAILED after {_clock(result.elapsed_s)} (exit {result.returncode})"
    text = f"done in {_clock(result.elapsed_s)}: version {result.version} {result.promotion}"
    if result.beats_baseline is False and result.promotion == "promoted":
        text += " (unproven: it does not beat its strongest baseline, so its signal is HOLD)"
    return text


def _train_missing(settings: Settings, missing: list[tuple[str, str]]) -> list[TrainingResult]:
    from pipelines.tracking import registered_model_name

    names = ", ".join(registered_model_name(p, m) for p, m in missing)
    typer.echo(
        f"No production model yet for {names}: queueing bootstrap trainings, one at a time "
        f"({_budget(settings)}; ML_BOOTSTRAP_EPOCHS, ML_BOOTSTRAP_MAX_ROWS).",
        err=True,
    )
    results = []
    with queue_scheduler(settings) as queue:
        job_ids = [
            enqueue_bootstrap(queue, settings, pair=pair, model_type=model_type)
            for pair, model_type in missing
        ]
        for index, ((pair, model_type), job_id) in enumerate(
            zip(missing, job_ids, strict=True), start=1
        ):
            label = f"[{index}/{len(missing)}] {registered_model_name(pair, model_type)}"
            reporter = _Reporter(label, network=model_type in NETWORK_TYPES)
            try:
                result = watch_job(settings, queue, job_id, on_progress=reporter)
            except KeyboardInterrupt:
                for other in job_ids[index:]:
                    _cancel(queue, other)
                reporter.line(f"{label}  interrupted: its job cancelled, its run marked KILLED")
                raise typer.Exit(code=130) from None
            reporter.line(f"{label}  {_outcome(result)}   job {job_id}, run {result.run_id}")
            if not result.ok:
                log = _shown(result.log_path) if result.log_path else "(none)"
                typer.echo(
                    f"    log: {log}\n"
                    + "\n".join(f"    | {line}" for line in (result.error or "").splitlines())
                    + f"\n    The API still starts; {pair} answers the neutral fallback until a "
                    f"training succeeds (the queue retries job {job_id}; "
                    f"POST /api/train/{pair}/{model_type} queues another).",
                    err=True,
                )
            results.append(result)
    return results


def _serve(settings: Settings) -> None:
    """uvicorn in this thread; the banner is printed once the app has started."""
    import uvicorn

    from service.app import create_app
    from service.bounds import server_config

    # The same bounds as `tbml serve` (frames, connections, header and idle timeouts).
    config = server_config(create_app(settings), settings, log_level="info", access_log=False)
    server = uvicorn.Server(config)
    url = f"http://{settings.host}:{settings.port}"

    def banner() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.1)
        if server.started:
            typer.echo(
                f"\ntrading-bot-ml is serving on {url}\n"
                f"  API docs   {url}/docs\n"
                f"  metrics    {url}/metrics\n"
                f"  MLflow UI  make ui   (then http://127.0.0.1:5000)\n"
                f"  try        curl {url}/api/predictions/BTC\n"
                "  Ctrl-C stops it.\n",
                err=True,
            )

    threading.Thread(target=banner, name="banner", daemon=True).start()
    server.run()
    if not server.started:
        raise typer.Exit(code=1)


def up(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind; default HOST or 127.0.0.1.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port; default PORT or 3001.")] = None,
    train: Annotated[
        bool,
        typer.Option("--train/--no-train", help="Train pairs that have no production model first."),
    ] = True,
) -> None:
    """Migrate, train bootstrap models for pairs without a production model, and serve."""
    from pipelines.db import migrate
    from pipelines.settings import get_settings
    from service.cli import check_bind_or_exit

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Alembic (ours and MLflow's) logs every migration step at INFO; `-v` shows them.
        for name in ("alembic", "mlflow.store.db.utils", "apscheduler"):
            logging.getLogger(name).setLevel(logging.WARNING)
    base = get_settings()
    updates = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = base.model_copy(update=updates)
    check_bind_or_exit(settings)  # before any training: serving would refuse at the end
    if not _port_free(settings.host, settings.port):
        typer.echo(
            f"error: {settings.host}:{settings.port} is in use; stop what runs there or choose "
            "another port (PORT=3002 make run, or tbml up --port 3002)",
            err=True,
        )
        raise typer.Exit(code=1)
    started = time.monotonic()
    migrate(settings)
    typer.echo(f"service database at the newest schema ({redact(settings.database_url)})", err=True)
    missing: list[tuple[str, str]] = []
    if train:
        # The first run creates the MLflow store's tables: quiet for ten seconds or more.
        typer.echo(f"checking the model registry ({redact(settings.tracking_uri)})", err=True)
        missing = missing_production_models(settings, client=_client(settings))
    if missing:
        results = _train_missing(settings, missing)
        trained = [r for r in results if r.ok]
        typer.echo(
            f"\nTrained {len(trained)} of {len(results)} in {_clock(time.monotonic() - started)}. "
            f"These are bootstrap models ({_budget(settings)}). "
            "Train fully with `make train PAIR=BTC` or "
            f"`curl -X POST http://{settings.host}:{settings.port}/api/train/BTC/lstm`.",
            err=True,
        )
    elif train:
        typer.echo("every pair has a production model; nothing to train", err=True)
    _serve(settings)


def register(app: typer.Typer) -> None:
    """Add `up` to `tbml`."""
    app.command("up")(up)
