"""`tbml features PAIR`: the newest feature row of a pair, with the spec's warm-up and lookback."""

from __future__ import annotations

from typing import Annotated

import typer


def features(
    pair: Annotated[str, typer.Argument(help="Base symbol of a configured pair, such as BTC.")],
    timeframe: Annotated[
        str | None,
        typer.Option("--timeframe", "-t", help="Candle timeframe (default: ML_TIMEFRAME)."),
    ] = None,
    feature_set: Annotated[
        str,
        typer.Option("--feature-set", "-s", help="Feature set: default, extended, raw or cross."),
    ] = "default",
) -> None:
    """Print the latest feature row of PAIR, the warm-up length and the spec version."""
    from pipelines.candles.store import CandlesNotFoundError, CandleStore
    from pipelines.features.compute import InvalidCandlesError, latest_features
    from pipelines.features.references import cross_references, store_loader, with_references
    from pipelines.features.spec import feature_spec
    from pipelines.pairs import InvalidNameError, check_pair
    from pipelines.settings import get_settings

    settings = get_settings()
    try:
        symbol = check_pair(pair, settings.pairs)
        store = CandleStore.from_settings(settings)
        frame = timeframe or settings.timeframe
        candles = store.load(symbol, frame)
        spec = feature_spec(
            feature_set,
            timeframe=frame,
            references=cross_references(settings.cross_anchor, settings.pairs),
        )
        attached = with_references(candles, pair=symbol, spec=spec, load=store_loader(store, frame))
        row = latest_features(attached, rows=1, spec=spec)
    except (InvalidNameError, CandlesNotFoundError, InvalidCandlesError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc

    values = row.iloc[0]
    typer.echo(f"pair: {symbol}")
    typer.echo(f"timeframe: {timeframe or settings.timeframe}")
    typer.echo(f"latest candle: {row.index[0].isoformat()} (open time, UTC)")
    typer.echo(f"candles: {len(candles)}")
    typer.echo(f"feature set: {feature_set}")
    typer.echo(f"features: {len(spec.names)}")
    typer.echo(f"warm-up: {spec.warmup} candles")
    typer.echo(f"lookback: {spec.lookback} candles")
    typer.echo(f"spec version: {spec.version}")
    if len(candles) <= spec.warmup:
        typer.echo(f"note: {len(candles)} candles do not cover the warm-up; NaN = not yet defined")
    width = max(len(name) for name in spec.names) + 1
    for name in spec.names:
        typer.echo(f"  {name + ':':<{width}} {values[name]: .6g}")


def register(app: typer.Typer) -> None:
    """Add this package's commands to `app`."""
    app.command("features")(features)
