"""`tbml backtest`: replay the lifecycle over past candles and say what it would have earned.

    tbml backtest --pairs BTC,ETH --model-type lightgbm --start 2023-01-01 --end 2023-12-30

Settings are the service's (environment, `.env`): the retraining policy, the gate, the
challenger policy, the thresholds, `ML_FEE`. The run and its child runs (the trainings) go to
the experiment `<ML_EXPERIMENT_NAME>-backtest` of the tracking store; the report and plots to
`--out` (default `reports/backtest/<pairs>-<type>-<start>-<end>/`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipelines.settings import PROJECT_ROOT

DEFAULT_OUT = PROJECT_ROOT / "reports" / "backtest"


def _day(name: str, text: str | None) -> object:
    import pandas as pd

    if text is None:
        return None
    try:
        moment = pd.Timestamp(text)
        valid = not pd.isna(moment)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise typer.BadParameter(f"{name} must be a date such as 2023-01-01, got {text!r}")
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")


def backtest(
    pairs: Annotated[
        str | None,
        typer.Option(help="Comma-separated pairs (default: ML_PAIRS)."),
    ] = None,
    model_type: Annotated[
        str,
        typer.Option(help="The type every training fits (lightgbm, logistic, lstm, ...)."),
    ] = "lightgbm",
    start: Annotated[
        str | None,
        typer.Option(help="First hour replayed (default: a year before --end)."),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(help="Last hour replayed (default: the newest candle of the first pair)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Where report.md, decisions.json and plots/ go."),
    ] = None,
    max_rows: Annotated[
        int | None,
        typer.Option(
            help="Newest candles each training reads (default ML_MAX_ROWS, 0 = all): fewer "
            "make each training faster and the replay less like the service."
        ),
    ] = None,
    importance: Annotated[
        bool,
        typer.Option(
            "--importance/--no-importance",
            help="Permutation importance in every training (ML_IMPORTANCE_ROWS); off by "
            "default: it decides nothing and costs seconds a training.",
        ),
    ] = False,
) -> None:
    """Replay the lifecycle over past candles: trainings, gate, shadow, promotions, the answer
    each hour, and trading after fees against buy-and-hold."""
    import pandas as pd

    from mlproject.backtest_report import run_backtest
    from mlproject.config import TrainConfig
    from mlproject.loading import load_candles
    from pipelines.pairs import check_model_type, check_pair, normalize_symbol
    from pipelines.settings import get_settings

    settings = get_settings()
    if not importance:
        settings = settings.model_copy(update={"importance_rows": 0})
    try:
        chosen = (
            [normalize_symbol(p) for p in pairs.split(",") if p.strip()]
            if pairs
            else list(settings.pairs)
        )
        if not chosen:
            raise ValueError(f"--pairs names no pair ({pairs!r}): give e.g. BTC,ETH")
        for pair in chosen:
            check_pair(pair, settings.pairs)
        kind = check_model_type(model_type)
        if max_rows is not None and max_rows < 0:
            raise ValueError(f"--max-rows must be 0 (all) or positive, got {max_rows}")
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    last = _day("--end", end)
    first = _day("--start", start)
    if last is None:
        config = TrainConfig.from_settings(settings, pair=chosen[0], model_type=kind)
        last = pd.Timestamp(load_candles(config, settings=settings).index[-1])
    assert isinstance(last, pd.Timestamp)
    if first is None:
        first = last - pd.Timedelta(days=365)
    assert isinstance(first, pd.Timestamp)
    if first >= last:
        typer.echo(f"error: --start ({first}) must be before --end ({last})", err=True)
        raise typer.Exit(code=2)
    target = out or DEFAULT_OUT / f"{'-'.join(chosen)}-{kind}-{first:%Y%m%d}-{last:%Y%m%d}"
    command = "tbml backtest " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 else [])
    overrides = {} if max_rows is None else {"max_rows": max_rows}
    try:
        result = run_backtest(
            pairs=chosen,
            model_type=kind,
            start=first,
            end=last,
            settings=settings,
            out=target,
            command=command.strip(),
            overrides=overrides,
        )
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    total = result.total
    typer.echo(
        f"backtest {','.join(chosen)} {kind} {first:%Y-%m-%d} .. {last:%Y-%m-%d}: "
        f"{total['signal_hours']:.0f} of {total['hours']:.0f} hours answered BUY or SELL; "
        f"{total['trainings']:.0f} trainings, {total['promotions']:.0f} promotions; return "
        f"after fees {total['return_after_fees'] * 100:+.2f} % against buy-and-hold "
        f"{total['buy_hold_return'] * 100:+.2f} %; report {result.report}; MLflow run "
        f"{result.run_id}"
    )
