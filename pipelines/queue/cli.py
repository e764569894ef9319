"""`tbml queue ...` shows and drives the training queue; `tbml worker` runs its scheduler.

The queue commands work on the service database directly (the same domain API the REST
routes call); a running scheduler (`tbml worker`, or the API's) acts on the change at its next
tick. `--json` prints exactly what the REST API would answer.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.training_params import PARAMS

if TYPE_CHECKING:
    from pipelines.queue.api import TrainingQueue
    from pipelines.queue.schemas import ApiModel, QueueStatus

queue_app = typer.Typer(
    name="queue",
    help="Show and drive the training queue (one training at a time, with cooldowns).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the REST API's JSON.")]


def register(app: typer.Typer) -> None:
    """Add `tbml queue ...` and `tbml worker` to `app`."""
    app.add_typer(queue_app)
    app.command("worker")(worker)


def _quiet_libraries() -> None:
    import logging

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Alembic logs each migration step and APScheduler each tick at INFO; `-v` shows them.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("apscheduler").setLevel(logging.WARNING)


def _queue() -> TrainingQueue:
    from pipelines.db import migrate
    from pipelines.queue.api import TrainingQueue
    from pipelines.settings import get_settings

    _quiet_libraries()
    settings = get_settings()
    migrate(settings)
    return TrainingQueue(settings)


def _emit(result: ApiModel, *, as_json: bool, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(result.to_json_dict(), indent=2))
    else:
        typer.echo(text)


def _fail(error: Exception) -> typer.Exit:
    from pipelines.queue.errors import QueueValidationError

    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=2 if isinstance(error, QueueValidationError) else 1)


@queue_app.command("status")
def status(
    as_json: JsonOption = False,
    history: Annotated[int, typer.Option(min=0, max=1000, help="Ended jobs to list.")] = 10,
) -> None:
    """Active, queued (in dispatch order) and recent jobs, and the active cooldowns."""
    result = _queue().queue_status(history_limit=history)
    _emit(result, as_json=as_json, text=_status_text(result.queue))


def _status_text(queue: QueueStatus) -> str:
    lines = []
    if queue.paused:
        lines.append(f"DISPATCH PAUSED ({queue.paused_reason}); `tbml queue resume` to resume")
    lines.append(f"active ({queue.active.count}):")
    for job in queue.active.jobs:
        note = " (cancel requested)" if job.cancel_requested else ""
        lines.append(
            f"  {job.id}  attempt {job.attempt}  {job.duration / 1000:.0f} s  run {job.run_id}"
            f"{note}"
        )
    lines.append(f"queued ({queue.queued.count}):")
    for queued in queue.queued.jobs:
        wait = (
            f"  cooldown {queued.cooldown_remaining_minutes} min"
            if queued.cooldown_remaining_minutes
            else ""
        )
        lines.append(
            f"  {queued.queue_position:>3}. {queued.id}  priority {queued.priority}  "
            f"waiting {queued.queued_for / 1000:.0f} s{wait}"
        )
    lines.append(f"cooldowns ({len(queue.cooldowns)}):")
    for cooldown in queue.cooldowns:
        lines.append(
            f"  {cooldown.pair}:{cooldown.model_type}  "
            f"{cooldown.cooldown_remaining_minutes} min left"
        )
    lines.append(f"history ({queue.history.total} ended, newest first):")
    for ended in queue.history.recent:
        extra = ended.error.splitlines()[0] if ended.error else ended.promotion or ""
        lines.append(
            f"  {ended.id}  {ended.status}  attempts {ended.attempts}/{ended.max_attempts}  {extra}"
        )
    return "\n".join(lines)


def _parse_params(items: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="-P")
        params[name.strip()] = value.strip()
    return params


@queue_app.command("enqueue")
def enqueue(
    pair: Annotated[str, typer.Argument(help="A configured pair, such as BTC.")],
    model_type: Annotated[str, typer.Argument(help="Model type.")] = "lstm",
    priority: Annotated[int, typer.Option(help="1 (highest) to 10 (lowest).")] = 5,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-P",
            help=f"A training parameter NAME=VALUE (repeatable): {', '.join(PARAMS)}; each one "
            "left out is its setting's value (ML_...).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Queue a training of PAIR (and MODEL_TYPE)."""
    from pipelines.queue.errors import DuplicateJobError, QueueError

    params = _parse_params(param or [])
    if epochs is not None:
        params["epochs"] = epochs
    try:
        result = _queue().enqueue(
            pair=pair, model_type=model_type, params=params, priority=priority, requested_by="cli"
        )
    except DuplicateJobError as error:
        raise _fail(error) from None
    except QueueError as error:
        raise _fail(error) from None
    text = result.message
    if not result.can_train.allowed:
        text += f"\n  ({result.can_train.reason})"
    _emit(result, as_json=as_json, text=f"{result.job_id}: {text}")


@queue_app.command("show")
def show(
    job_id: Annotated[str, typer.Argument(help="Job id, such as BTC_lstm_1704067200000.")],
) -> None:
    """One job with every attempt, as JSON."""
    from pipelines.queue.errors import QueueError

    try:
        job = _queue().get_job(job_id=job_id)
    except QueueError as error:
        raise _fail(error) from None
    typer.echo(json.dumps(job.to_json_dict(), indent=2))


@queue_app.command("cancel")
def cancel(
    job_id: Annotated[str, typer.Argument(help="Job id, such as BTC_lstm_1704067200000.")],
    reason: Annotated[str | None, typer.Option(help="Why (kept in the history).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a queued job, or stop a training one (its process tree is killed)."""
    from pipelines.queue.errors import QueueError

    try:
        result = _queue().cancel(job_id=job_id, reason=reason)
    except QueueError as error:
        raise _fail(error) from None
    _emit(result, as_json=as_json, text=result.message)


@queue_app.command("stop")
def stop(
    reason: Annotated[str | None, typer.Option(help="Why (kept in the history).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Emergency stop: kill the training, cancel every queued job, pause until resume."""
    result = _queue().emergency_stop(reason=reason)
    _emit(result, as_json=as_json, text=result.message)


@queue_app.command("resume")
def resume(as_json: JsonOption = False) -> None:
    """Let the scheduler dispatch again after an emergency stop."""
    result = _queue().resume()
    _emit(result, as_json=as_json, text=result.message)


@queue_app.command("clear-cooldowns")
def clear_cooldowns(
    pair: Annotated[str | None, typer.Option(help="Only this pair.")] = None,
    model_type: Annotated[str | None, typer.Option(help="Only this model type.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Clear the cooldown of one pair and model type, or all cooldowns."""
    from pipelines.queue.errors import QueueError

    try:
        result = _queue().clear_cooldowns(pair=pair, model_type=model_type)
    except QueueError as error:
        raise _fail(error) from None
    _emit(result, as_json=as_json, text=result.message)


def worker() -> None:
    """Run the training scheduler in this process until SIGTERM or SIGINT.

    Start one per deployment. A second one started by mistake waits on standby (it never
    dispatches while the first holds the database lease) and takes over if the first dies.
    """
    import logging
    import signal
    import threading

    from pipelines.candles.feed import attach_feed
    from pipelines.queue.runtime import TrainingScheduler
    from pipelines.settings import get_settings

    _quiet_libraries()
    stop_requested = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        stop_requested.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    settings = get_settings()
    scheduler = TrainingScheduler(settings)
    attach_feed(scheduler, settings)  # the live candles: fetched here while this holds the lease
    scheduler.start()
    logging.getLogger(__name__).info(
        "worker %s running (lease %s)",
        scheduler.worker_id,
        "held" if scheduler.holds_lease else "on standby",
    )
    try:
        while not stop_requested.wait(1.0):
            pass
    finally:
        scheduler.shutdown()
