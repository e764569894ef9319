"""`tbml up` (what `make run` runs): migrate, train what has no production model, then serve.

On a fresh clone the registry is empty, so every configured pair and enabled model type gets a
short "bootstrap" training (`ML_BOOTSTRAP_EPOCHS`, `ML_BOOTSTRAP_MAX_ROWS`), one at a time, each
a real MLflow Project run of the `train` entry point in a child process: the same command the
training queue runs, so the run, its parameters, the registered version and the promotion gate
are exactly those of any other training. The parent creates the run first and reads its
per-epoch metrics back from the tracking store to show progress. A failed training is reported
with its log and the API starts anyway, answering the fallback for that pair. Once every model
has a production version, `tbml up` only migrates and serves, in seconds.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipelines.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

TAG_BOOTSTRAP = "tbml.bootstrap"
_POLL_S = 1.0


@dataclass(frozen=True)
class Progress:
    """Where one bootstrap training stands, read back from its MLflow run."""

    stage: str  # starting | fitting | finishing
    epochs: int  # most epochs (early stopping may end sooner)
    # Per finished epoch, in order: loss, val_loss, accuracy, val_accuracy.
    history: tuple[dict[str, float], ...]
    elapsed_s: float

    @property
    def epoch(self) -> int:
        """Epochs finished so far."""
        return len(self.history)


@dataclass(frozen=True)
class TrainingResult:
    """How one bootstrap training ended."""

    pair: str
    model_type: str
    run_id: str | None
    returncode: int
    elapsed_s: float
    log_path: Path
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
    from pipelines.queue.tracking import client_for

    return client_for(settings)


def missing_production_models(settings: Settings, *, client: Any) -> list[tuple[str, str]]:
    """The (pair, model type) slots the service would serve that have no production version."""
    from pipelines.modelbundle import production_version, registered_model_name

    return [
        (pair, model_type)
        for pair in settings.pairs
        for model_type in settings.enabled_models
        if production_version(client, name=registered_model_name(pair, model_type)) is None
    ]


def bootstrap_params(settings: Settings) -> dict[str, object]:
    """The `train` entry point's parameters: the settings' model, with the bootstrap budget."""
    return {
        "epochs": settings.bootstrap_epochs,
        "max_rows": settings.bootstrap_max_rows,
        "batch_size": settings.batch_size,
        "sequence_length": settings.sequence_length,
        "units": settings.lstm_units,
        "layers": settings.lstm_layers,
        "dropout": settings.dropout,
        "learning_rate": settings.learning_rate,
        "horizon": settings.horizon,
    }


def _create_run(settings: Settings, *, pair: str, model_type: str) -> tuple[str, str]:
    """Create the run the child fills (as the queue does), so its metrics can be watched."""
    from pipelines.modelbundle import registered_model_name
    from pipelines.queue.tracking import create_project_run

    return create_project_run(
        settings,
        run_name=f"bootstrap-{registered_model_name(pair, model_type)}",
        pair=pair,
        model_type=model_type,
        tags={TAG_BOOTSTRAP: "true"},
    )


def _progress(client: Any, run_id: str, *, epochs: int, started: float) -> Progress:
    history = {
        name: {m.step: float(m.value) for m in client.get_metric_history(run_id, name)}
        for name in ("epoch_seconds", "loss", "val_loss", "accuracy", "val_accuracy")
    }
    done = sorted(history.pop("epoch_seconds"))
    per_epoch = tuple({k: v[step] for k, v in history.items() if step in v} for step in done)
    fitted = "fit_seconds" in client.get_run(run_id).data.metrics
    stage = "finishing" if fitted else ("fitting" if done else "starting")
    return Progress(stage, epochs, per_epoch, time.monotonic() - started)


def train_slot(
    settings: Settings,
    *,
    pair: str,
    model_type: str,
    on_progress: Callable[[Progress], None] | None = None,
    poll_s: float = _POLL_S,
) -> TrainingResult:
    """Run one bootstrap training (`mlflow run . -e train ...`) and wait for it.

    Never raises for a failed training: the result says what happened and where the log is.
    Ctrl-C kills the child's process tree and marks the run KILLED before it propagates.
    """
    from pipelines.modelbundle import production_version, registered_model_name
    from pipelines.queue.childenv import child_environment
    from pipelines.queue.runner import build_command, kill_tree, log_dir, log_tail, wait_gone
    from pipelines.queue.tracking import end_run, read_report

    name = registered_model_name(pair, model_type)
    log_path = log_dir(settings) / f"bootstrap-{name}.log"
    started = time.monotonic()
    try:
        experiment_id, run_id = _create_run(settings, pair=pair, model_type=model_type)
    except Exception as exc:
        return TrainingResult(pair, model_type, None, -1, 0.0, log_path, error=str(exc))
    command = build_command(
        settings,
        experiment_id=experiment_id,
        run_id=run_id,
        pair=pair,
        model_type=model_type,
        params=bootstrap_params(settings),
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    client = _client(settings)
    seen: list[int] = []
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=child_environment(settings, extra={}),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while True:
            finished = process.poll() is not None
            with contextlib.suppress(Exception):  # a busy store must not stop the watch
                progress = _progress(
                    client, run_id, epochs=settings.bootstrap_epochs, started=started
                )
                seen.extend(range(len(seen) + 1, progress.epoch + 1))
                if on_progress is not None:
                    on_progress(progress)
            if finished:
                break
            time.sleep(poll_s)
    except BaseException:
        killed = kill_tree(process.pid, started_at=None)
        process.wait()
        wait_gone(killed)
        with contextlib.suppress(Exception):
            end_run(settings, run_id, status="KILLED")
        raise
    elapsed = time.monotonic() - started
    returncode = int(process.returncode)
    if returncode != 0:
        with contextlib.suppress(Exception):
            end_run(settings, run_id, status="FAILED")
        tail = log_tail(log_path, lines=12)
        return TrainingResult(
            pair, model_type, run_id, returncode, elapsed, log_path, error=tail, epochs_seen=seen
        )
    report = read_report(settings, run_id)
    return TrainingResult(
        pair,
        model_type,
        run_id,
        returncode,
        elapsed,
        log_path,
        version=report.registered_version,
        promotion=report.promotion,
        reason=report.promotion_reason,
        production=production_version(client, name=name),
        beats_baseline=report.beats_baseline,
        epochs_seen=seen,
    )


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

    def __init__(self, label: str) -> None:
        self.label = label
        self.stage = ""
        self.epochs_shown = 0
        self.live = sys.stderr.isatty()

    def __call__(self, progress: Progress) -> None:
        clock = f"[{_clock(progress.elapsed_s)}]"
        changed = False
        if progress.stage == "starting" and not self.stage:
            self.line(f"{self.label}  loading candles, features, starting TensorFlow  {clock}")
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
    return f"{epochs} epoch{'s' if epochs != 1 else ''} at most on {candles}"


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
    from pipelines.modelbundle import registered_model_name

    names = ", ".join(registered_model_name(p, m) for p, m in missing)
    typer.echo(
        f"No production model yet for {names}: training bootstrap models, one at a time "
        f"({_budget(settings)}; ML_BOOTSTRAP_EPOCHS, ML_BOOTSTRAP_MAX_ROWS).",
        err=True,
    )
    results = []
    for index, (pair, model_type) in enumerate(missing, start=1):
        label = f"[{index}/{len(missing)}] {registered_model_name(pair, model_type)}"
        reporter = _Reporter(label)
        try:
            result = train_slot(settings, pair=pair, model_type=model_type, on_progress=reporter)
        except KeyboardInterrupt:
            reporter.line(f"{label}  interrupted: training stopped, its run marked KILLED")
            raise typer.Exit(code=130) from None
        reporter.line(f"{label}  {_outcome(result)}   run {result.run_id}")
        if not result.ok:
            typer.echo(
                f"    log: {_shown(result.log_path)}\n"
                + "\n".join(f"    | {line}" for line in (result.error or "").splitlines())
                + f"\n    The API still starts; {pair} answers the neutral fallback until a "
                f"training succeeds (POST /api/train/{pair}/{model_type}).",
                err=True,
            )
        results.append(result)
    return results


def _serve(settings: Settings) -> None:
    """uvicorn in this thread; the banner is printed once the app has started."""
    import uvicorn

    from service.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
    )
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

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Alembic (ours and MLflow's) logs every migration step at INFO; `-v` shows them.
        for name in ("alembic", "mlflow.store.db.utils", "apscheduler"):
            logging.getLogger(name).setLevel(logging.WARNING)
    base = get_settings()
    updates = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = base.model_copy(update=updates)
    if not _port_free(settings.host, settings.port):
        typer.echo(
            f"error: {settings.host}:{settings.port} is in use; stop what runs there or choose "
            "another port (PORT=3002 make run, or tbml up --port 3002)",
            err=True,
        )
        raise typer.Exit(code=1)
    started = time.monotonic()
    migrate(settings)
    typer.echo(f"service database at the newest schema ({settings.database_url})", err=True)
    missing: list[tuple[str, str]] = []
    if train:
        # The first run creates the MLflow store's tables: quiet for ten seconds or more.
        typer.echo(f"checking the model registry ({settings.tracking_uri})", err=True)
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
