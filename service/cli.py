"""`tbml serve`: the prediction API under uvicorn (port 3001, 127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from pipelines.settings import Settings


def check_bind_or_exit(settings: Settings) -> None:
    """`check_bind` for a command line: its message on stderr and exit status 2, no traceback."""
    from service.security import UnsafeBindError, check_bind

    try:
        check_bind(settings)
    except UnsafeBindError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None


def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind; default HOST or 127.0.0.1.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port; default PORT or 3001.")] = None,
    scheduler: Annotated[
        bool,
        typer.Option(
            "--scheduler/--no-scheduler",
            help="Run the training scheduler in this process (--no-scheduler for an API replica "
            "that only enqueues while `tbml worker` dispatches).",
        ),
    ] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve predictions, features, the training queue and storage routes over HTTP."""
    import uvicorn

    from pipelines.settings import get_settings
    from service.app import create_app
    from service.bounds import server_config

    base = get_settings()
    updates: dict[str, object] = {"run_scheduler": scheduler and base.run_scheduler}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    settings = base.model_copy(update=updates)
    check_bind_or_exit(settings)
    typer.echo(
        f"trading-bot-ml on http://{settings.host}:{settings.port}  "
        f"(docs: /docs, metrics: /metrics; MLflow UI: `make ui`)",
        err=True,
    )
    # The bounds of service.bounds (connections, header and body deadlines, WebSocket message
    # size) hold only under its protocol: every server of the API is built by `server_config`.
    server = uvicorn.Server(server_config(create_app(settings), settings, log_level=log_level))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise typer.Exit(code=3)  # uvicorn's own exit status for a failed start


def register(app: typer.Typer) -> None:
    """Add `serve` to `tbml`."""
    app.command("serve")(serve)
