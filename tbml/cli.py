"""`tbml`: the platform's command line. Each command group lives beside the code it drives.

It sits above every layer (`pipelines`, `mlproject`, `service`) because it registers all of
their commands; no layer imports it.

Commands import their heavy dependencies (ccxt, TensorFlow, MLflow, uvicorn) inside the command,
so `tbml --help` is instant and a command never pays for another's imports.
"""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="tbml",
    help="trading-bot-ml: candles, features, training, queue and the prediction service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."),
) -> None:
    """trading-bot-ml command line."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from pipelines.redact import install_log_redaction

    install_log_redaction()
    # APScheduler logs every run of the 5-second dispatcher at INFO; keep its warnings only.
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)


def _register() -> None:
    # Each module adds its own commands to `app`; registration order is the help order.
    from mlproject import cli as mlproject_cli
    from mlproject import verdict as verdict_cli
    from pipelines.candles import cli as candles_cli
    from pipelines.candles import replay as replay_cli
    from pipelines.features import cli as features_cli
    from pipelines.queue import cli as queue_cli
    from service import bootstrap as bootstrap_cli
    from service import cli as service_cli
    from service import demo as demo_cli

    candles_cli.register(app)
    replay_cli.register(app)
    features_cli.register(app)
    queue_cli.register(app)
    mlproject_cli.register(app)
    verdict_cli.register(app)
    service_cli.register(app)
    bootstrap_cli.register(app)
    demo_cli.register(app)


_register()
