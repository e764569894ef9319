"""`tbml ingest`: fetch new closed candles from an exchange into the candle store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from pipelines.candles.ingest import IngestResult


def register(app: typer.Typer) -> None:
    """Add this package's commands to `app`."""
    app.command("ingest")(ingest)


def ingest(
    pair: Annotated[
        str,
        typer.Option(
            help="The exchange's market symbol, such as BTC/USDT; a bare BTC takes the "
            "configured quote currency (ML_QUOTE_CURRENCY)."
        ),
    ],
    exchange: Annotated[
        str | None,
        typer.Option(help="ccxt exchange id (default: ML_EXCHANGE, binance).", show_default=False),
    ] = None,
    timeframe: Annotated[
        str | None,
        typer.Option(help="Candle timeframe (default: ML_TIMEFRAME, 1h).", show_default=False),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Open time of the first candle to fetch, ISO 8601 UTC (2024-01-01T00:00Z). "
            "Default: one timeframe after the newest candle known (bundled or ingested).",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Data directory; candles go to DATA_DIR/candles/EXCHANGE/ "
            "(default: ML_DATA_DIR, data).",
            show_default=False,
        ),
    ] = None,
    api_url: Annotated[
        str | None,
        typer.Option(
            help="Send the exchange's REST calls to this base URL instead, such as the mirror "
            "https://data-api.binance.vision.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Append the exchange's new closed candles of a pair to the data directory."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from pipelines.candles.ingest import IngestError, IngestProgress, ingest_candles, parse_since
    from pipelines.settings import get_settings

    settings = get_settings()
    exchange_id = exchange or settings.exchange
    symbol = f"{pair}/{settings.quote_currency}" if pair.isalnum() else pair
    tf = timeframe or settings.timeframe
    err = Console(stderr=True)
    bar = Progress(
        TextColumn(escape(f"{exchange_id} {symbol} {tf}")),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("candles"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,  # a bar in a log file is noise
    )
    task = bar.add_task("fetch", total=None)

    def on_page(update: IngestProgress) -> None:
        bar.update(task, completed=update.kept, total=update.expected)

    try:
        with bar:
            result = ingest_candles(
                exchange=exchange_id,
                pair=symbol,
                timeframe=tf,
                since=parse_since(since) if since is not None else None,
                data_dir=data_dir.resolve() if data_dir is not None else settings.data_dir,
                bundled_dir=settings.bundled_data_dir,
                progress=on_page,
                api_url=api_url,
            )
    # Bad names and times (IngestInputError), malformed candles (CandleValidationError) and the
    # store's own refusals are all ValueErrors; each message names the value and what is allowed.
    except (ValueError, IngestError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(_summary(result))


def _summary(result: IngestResult) -> str:
    def iso(stamp: object) -> str:
        return f"{stamp:%Y-%m-%dT%H:%MZ}"

    lines = [
        f"{result.exchange} {result.symbol} {result.timeframe}: fetched {result.fetched} "
        f"candles from {iso(result.start)}, appended {result.appended} closed",
        f"file: {result.path}",
    ]
    if result.first_new is not None:
        lines.append(f"new range: {iso(result.first_new)} .. {iso(result.last_new)}")
    if result.gaps:
        missing = sum(gap.missing for gap in result.gaps)
        lines.append(f"gaps: {len(result.gaps)} ({missing} candles missing)")
        lines.extend(f"  {gap}" for gap in result.gaps)
    else:
        lines.append("gaps: none")
    return "\n".join(lines)
