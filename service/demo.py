"""`tbml demo` (`make demo`): the whole lifecycle, offline, in minutes.

A replay exchange (`pipelines.candles.replay`) serves the bundled candles up to a start point
and then releases the next real candle every `--interval` seconds, as if an hour passed. The
full service (`tbml up`) runs beside it with every store in a demo directory of its own
(`demo/` by default: its own truncated copy of the bundled candles, MLflow store, artifacts and
service database), its feed pointed at the replay (`ML_EXCHANGE_URL`), small bootstrap models
and a retraining policy sized for replayed hours. What to watch is printed at start.

A second `tbml demo` reuses the directory: its models are served at once, and the replay
continues from the newest candle the demo's store holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from pipelines.settings import resolve_path

DEMO_DIR = Path("demo")
STATE_FILE = "replay.json"

# The demo's settings: environment variables the user has set win over these.
DEMO_ENV = {
    "ML_FEED": "true",
    "ML_FEED_DELAY": "0",
    "ML_CANDLE_WATCH_INTERVAL": "250",
    "ML_OUTCOME_FILL_INTERVAL": "1000",
    "ML_MODEL_REFRESH_INTERVAL": "2000",
    "ML_POLICY_INTERVAL": "2000",
    "ML_QUEUE_PROCESSING_INTERVAL": "1000",
    "ML_TRAINING_COOLDOWN": "60000",
    # A retraining once 12 replayed hours of new candles exist (about a minute at 3 s each).
    "ML_RETRAIN_INTERVAL_HOURS": "12",
    "ML_BOOTSTRAP_EPOCHS": "2",
    "ML_BOOTSTRAP_MAX_ROWS": "3000",
    "ML_EPOCHS": "2",
    "ML_MAX_ROWS": "3000",
    # Each version is refit on all but its newest ML_GATE_MIN_ROWS candles (ML_REFIT), and the
    # gate compares it with production on those held rows that production never learnt: 6 here
    # against 100 by default, so that a retraining is due and decided within minutes.
    "ML_GATE_MIN_ROWS": "6",
    # A passed version is the challenger, scored in shadow, until this many realised candles
    # decide (120, five days, by default).
    "ML_CHALLENGER_MIN_OUTCOMES": "12",
    "ML_CHALLENGER_INTERVAL": "2000",
}


def demo_environment(
    directory: Path, *, exchange_url: str, interval_s: float, pairs: list[str]
) -> dict[str, str]:
    """The variables that keep the demo's stores in `directory` and point its feed at the
    replay; the user's own environment wins where it names the same variable."""
    root = directory.resolve()
    values = {
        **DEMO_ENV,
        "ML_PAIRS": ",".join(pairs),
        "ML_DATA_DIR": str(root / "data"),
        "ML_BUNDLED_DATA_DIR": str(root / "ohlcv"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "ML_ARTIFACT_ROOT": str(root / "mlruns"),
        "ML_DATABASE_URL": f"sqlite:///{root / 'service.db'}",
        "ML_EXCHANGE_URL": exchange_url,
        # Poll a few times per replayed hour: the replay's hours last seconds.
        "ML_FEED_MAX_WAIT": f"{max(0.2, interval_s / 3):g}",
    }
    return {key: os.environ.get(key, value) for key, value in values.items()}


def _prepare(directory: Path, pairs: list[str], start: str | None) -> pd.Timestamp:
    """The demo directory's truncated candles (once), and where the replay starts now."""
    from pipelines.candles.replay import (
        allowed_starts,
        default_start,
        load_bundled,
        prepare_replay_store,
    )
    from pipelines.candles.store import CandleStore
    from pipelines.candles.timeframes import timeframe_delta
    from pipelines.settings import get_settings

    settings = get_settings()
    state = directory / STATE_FILE
    ohlcv = directory / "ohlcv"
    if not state.exists() or not ohlcv.is_dir():
        first = (
            pd.Timestamp(start, tz="UTC")
            if start
            else default_start(settings.bundled_data_dir, pairs=pairs)
        )
        prepare_replay_store(settings.bundled_data_dir, ohlcv, pairs=pairs, start=first)
        state.write_text(json.dumps({"start": first.isoformat(), "pairs": pairs}))
    saved = json.loads(state.read_text())
    first = pd.Timestamp(saved["start"])
    store = CandleStore(
        bundled_dir=ohlcv, data_dir=directory / "data", quote=settings.quote_currency
    )
    step = timeframe_delta(settings.timeframe)
    newest = min(store.load(pair, settings.timeframe).index[-1] for pair in pairs)
    _, last = allowed_starts(load_bundled(settings.bundled_data_dir, pairs=pairs))
    resume = max(first, newest + step)
    if resume > last:
        typer.echo(
            f"demo: every bundled candle has been replayed already (through {last.isoformat()}); "
            f"serving without new candles. Remove {directory} to start the demo afresh.",
            err=True,
        )
        return last
    return resume


def demo(
    host: Annotated[str | None, typer.Option(help="Interface; default HOST or 127.0.0.1.")] = None,
    port: Annotated[int | None, typer.Option(help="Service port; default PORT or 3001.")] = None,
    interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds per replayed candle (DEMO_INTERVAL).")
    ] = 3.0,
    pairs: Annotated[str, typer.Option(help="Pairs to replay and serve.")] = "BTC,ETH",
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo keeps its stores.")
    ] = DEMO_DIR,
    start: Annotated[
        str | None,
        typer.Option(help="First replayed candle (ISO); default 30 days before the end."),
    ] = None,
    replay_port: Annotated[int, typer.Option(help="Replay exchange port (0: any free).")] = 0,
) -> None:
    """Replay real candles through the full service, offline: feed, predictions, outcomes,
    retraining, the gate and the swap, in minutes."""
    from pipelines.candles.replay import ReplayExchange, ReplayServer
    from pipelines.settings import get_settings
    from service.bootstrap import up

    chosen = [p.strip().upper() for p in pairs.split(",") if p.strip()]
    root = resolve_path(directory)
    root.mkdir(parents=True, exist_ok=True)
    first = _prepare(root, chosen, start)
    settings = get_settings()
    exchange = ReplayExchange.from_bundled(
        settings.bundled_data_dir,
        pairs=chosen,
        start=first,
        interval_s=interval,
        timeframe=settings.timeframe,
        quote=settings.quote_currency,
    )
    server = ReplayServer(exchange, host="127.0.0.1", port=replay_port)
    server.start()
    env = demo_environment(root, exchange_url=server.url, interval_s=interval, pairs=chosen)
    os.environ.update(env)
    get_settings.cache_clear()
    shown_host = host or os.environ.get("HOST", "127.0.0.1")
    shown_port = port or int(os.environ.get("PORT", "3001"))
    base = f"http://{shown_host}:{shown_port}"
    typer.echo(
        "\n".join(
            [
                f"demo: replaying {', '.join(chosen)} from {first.isoformat()} at {server.url}, "
                f"one candle every {interval:g} s; stores in {root}",
                "watch:",
                f"  curl -s {base}/api/health | python -m json.tool   (feed, stale, models)",
                f"  python -m websockets ws://{shown_host}:{shown_port}/ws/predictions",
                f"  curl -s {base}/api/training/queue | python -m json.tool   (policy, jobs)",
                f"  curl -s {base}/api/predictions/BTC/history   (outcomes filling in)",
                f"  MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI']} make ui   (runs, versions)",
            ]
        ),
        err=True,
    )
    try:
        up(host=host, port=port, train=True)
    finally:
        server.stop()


def register(app: typer.Typer) -> None:
    """Add `demo` to `tbml`."""
    app.command("demo")(demo)
