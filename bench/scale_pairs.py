"""The service with 4, 25 and 100 pairs: memory, start, registry refresh, requests, the feed.

Self-contained, in a temporary directory: the bundled BTC candles are copied under other names
(`P001-USDT_1h.csv.gz`, `P002-...`), cut at a start time (`prepare_replay_store` writes the
cut BTC file once; its bytes are copied under each name). One tiny real
LSTM (1 layer of 8 units over 12 candles, 1 epoch on the newest 400 candles) is trained for
P001 and promoted; every other pair gets a registered model of its own, `{PAIR}-lstm`, whose
version 1 is a copy of P001's (same logged model as source and run, same tags) with the
`production` alias. So each size serves the same model once per pair. For each size
(`BENCH_SCALE_SIZES`, default 4,25,100), with the first N pairs configured (ML_PAIRS):

- `tbml serve` with the feed off and the candle watcher all but off (so the first request after
  a new candle does the work): seconds from spawning it to a real (non-fallback) prediction of
  every pair (a cold start: every bundle copied out of the registry); then `GET
  /api/predictions` (all pairs) on one keep-alive connection, cached, p50 over up to
  `CACHED_REQUESTS`; then `NEW_CANDLES` times: the next real candle written into every pair's
  ingested file (atomically, as `tbml ingest` does) and the first `GET /api/predictions` after
  it timed (every pair's features and ONNX run), median; the RSS of the process (psutil) at the
  end;
- one registry refresh: `ModelCache.refresh()` timed in a child process (MLflow's client on the
  SQLite store, as the service reads it), the first (copies every bundle) and the median of
  `REFRESHES` steady ones (every slot already at its production version: one registry lookup
  per pair). The service's `model-refresh` chore reports no duration, hence in-process;
- one feed cycle: a replay exchange serving every pair (in a thread here, one candle every
  `interval(N)` seconds) and `tbml serve` with ML_FEED=true at it (no delay, a fetch at least
  every 50 ms); for `FEED_CANDLES` candles, the time from the replay's release until every
  pair's ingested file holds the candle (a thread here `stat`s the files every 5 ms).

Run alone with `python -m bench.scale_pairs` (`--help` for the options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.live_loop import (
    BUNDLED,
    HOUR_MS,
    FileWatch,
    environment,
    open_ms_of,
    release_of,
    replay_start,
    run_child,
    start_serve,
)
from bench.predict_latency import Target, _Connection, _get_json, _rss_mib, _stop, _wait

SIZES = tuple(int(n) for n in os.environ.get("BENCH_SCALE_SIZES", "4,25,100").split(","))
CACHED_REQUESTS = int(os.environ.get("BENCH_SCALE_REQUESTS", "200"))
CACHED_MAX_S = 5.0
NEW_CANDLES = int(os.environ.get("BENCH_SCALE_NEW_CANDLES", "3"))
REFRESHES = int(os.environ.get("BENCH_SCALE_REFRESHES", "5"))
FEED_CANDLES = int(os.environ.get("BENCH_SCALE_FEED_CANDLES", "10"))
# Seconds per replayed candle: long enough for the feed to go round every pair in between.
INTERVAL_PER_PAIR_S = float(os.environ.get("BENCH_SCALE_INTERVAL_PER_PAIR", "0.03"))
MIN_INTERVAL_S = 0.5
# Candles the replay releases before the measured ones (the service's start, catching up).
FEED_WARMUP = 3
AIM_RSS_RATIO = 2.0


def pair_names(count: int) -> list[str]:
    """`P001`, `P002`, ...: base symbols of 2-12 letters or digits."""
    if not 1 <= count <= 999:
        raise ValueError(f"pair count must be 1..999, got {count}")
    return [f"P{i:03d}" for i in range(1, count + 1)]


def interval(count: int) -> float:
    """Seconds per replayed candle for `count` pairs."""
    return max(MIN_INTERVAL_S, INTERVAL_PER_PAIR_S * count)


# --- children ------------------------------------------------------------------------------------


def prepare_registry(pairs: list[str]) -> dict[str, Any]:
    """In the child: train the first pair's tiny model, register a copy under every other pair."""
    from mlflow import MlflowClient

    from bench.live_loop import train_tiny

    first = pairs[0]
    version = train_tiny(first)
    client = MlflowClient()
    original = client.get_model_version(f"{first}-lstm", version)
    if original.source is None:
        raise RuntimeError(f"{first}-lstm version {version} has no source")
    started = time.perf_counter()
    for pair in pairs[1:]:
        name = f"{pair}-lstm"
        client.create_registered_model(name)
        copy = client.create_model_version(
            name, source=original.source, run_id=original.run_id, tags=dict(original.tags)
        )
        client.set_registered_model_alias(name, "production", copy.version)
    return {
        "version": version,
        "source": original.source,
        "register_s": time.perf_counter() - started,
    }


def time_refresh(pairs: list[str], cache_dir: str) -> dict[str, Any]:
    """In the child: `ModelCache.refresh()` over the pairs' LSTM slots, first and steady."""
    from pipelines.settings import get_settings
    from service.model_cache import ModelCache

    settings = get_settings()
    cache = ModelCache(
        tracking_uri=settings.tracking_uri,
        cache_dir=Path(cache_dir),
        slots=[(pair, "lstm") for pair in pairs],
    )
    started = time.perf_counter()
    loaded = cache.refresh()
    first = time.perf_counter() - started
    if len(loaded) != len(pairs):
        raise RuntimeError(f"first refresh loaded {len(loaded)} of {len(pairs)} models")
    steady = []
    for _ in range(REFRESHES):
        started = time.perf_counter()
        swapped = cache.refresh()
        steady.append(time.perf_counter() - started)
        if swapped:
            raise RuntimeError(f"a steady refresh swapped {len(swapped)} models")
    cache.stop()
    return {"first_s": first, "steady_s": statistics.median(steady)}


# --- one size ------------------------------------------------------------------------------------


@dataclass
class Size:
    pairs: int
    rss_mib: float
    first_prediction_s: float
    refresh_first_s: float
    refresh_s: float
    cached_p50_ms: float
    new_candle_ms: float
    feed_cycle_s: float
    feed_cycle_max_s: float
    feed_rss_mib: float
    interval_s: float
    feed_missed: int = 0


def _write_candle(path: Path, line: str) -> None:
    """Append one candle line to an ingested file, atomically (as `tbml ingest` writes)."""
    old = path.read_text() if path.exists() else "timestamp,open,high,low,close,volume\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(old + line + "\n")
    os.replace(tmp, path)


def _source_lines(start: str, count: int) -> list[tuple[int, str]]:
    """The first `count` BTC candle lines at or after `start`: (open ms, line)."""
    import gzip

    import pandas as pd

    lines = gzip.decompress((BUNDLED / "BTC-USDT_1h.csv.gz").read_bytes()).decode().splitlines()
    begin = pd.Timestamp(start)
    out = []
    for line in lines[1:]:
        stamp = pd.Timestamp(line.split(",", 1)[0])
        if stamp >= begin:
            out.append((open_ms_of(stamp), line))
            if len(out) == count:
                break
    return out


def _all_loaded(port: int, count: int) -> bool:
    status, health = _get_json(port, "/api/health", timeout=60)
    states = [m["lstm"]["state"] for m in health["models"].values()]
    return bool(
        status == 200 and states == ["loaded"] * count and health["registry"]["lastRefresh"]
    )


def _requests(port: int, pairs: list[str], start: str, root: Path) -> tuple[float, list[float]]:
    """Cached p50 (s) of `GET /api/predictions`, and the first request after each new candle."""
    target = Target("all", port, "GET", "/api/predictions")
    conn = _Connection(port)
    try:
        for _ in range(5):
            conn.call(target)
        samples: list[float] = []
        deadline = time.perf_counter() + CACHED_MAX_S
        while len(samples) < CACHED_REQUESTS and (
            time.perf_counter() < deadline or len(samples) < 20
        ):
            started = time.perf_counter()
            conn.call(target)
            samples.append(time.perf_counter() - started)
        from pipelines.candles.store import CandleStore

        store = CandleStore(bundled_dir=root / "bundled", data_dir=root / "data")
        paths = [store.ingested_path(pair, "1h") for pair in pairs]
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        after: list[float] = []
        for open_ms, line in _source_lines(start, NEW_CANDLES):
            for path in paths:
                _write_candle(path, line)
            started = time.perf_counter()
            data = conn.call(target)
            after.append(time.perf_counter() - started)
            answers = json.loads(data)["predictions"]
            wrong = [p for p in pairs if answers[p].get("candleTime") != open_ms]
            if wrong:
                raise RuntimeError(
                    f"after a new candle ({open_ms}), {len(wrong)} pairs answered another "
                    f"candle, such as {wrong[0]}: {answers[wrong[0]]}"
                )
        return statistics.median(samples), after
    finally:
        conn.close()


def _feed_cycle(
    root: Path, pairs: list[str], start: str, env: dict[str, str]
) -> tuple[list[float], list[float], float, int]:
    """Per measured candle: seconds from release until every pair's file has it, and the
    median pair's; the service's RSS."""
    from pipelines.candles.replay import ReplayExchange, ReplayServer
    from pipelines.candles.store import CandleStore
    from pipelines.candles.validate import read_candle_file

    seconds = interval(len(pairs))
    # Every pair's candles are BTC's: one frame, read once, replayed under every name.
    frame = read_candle_file(BUNDLED / "BTC-USDT_1h.csv.gz")
    exchange = ReplayExchange(dict.fromkeys(pairs, frame), start=start, interval_s=seconds)
    with contextlib.ExitStack() as stack:
        replay = ReplayServer(exchange, host="127.0.0.1", port=0)
        replay.start()
        stack.callback(replay.stop)
        serve_env = {
            **env,
            "ML_FEED": "true",
            "ML_EXCHANGE_URL": replay.url,
            "ML_FEED_DELAY": "0",
            "ML_FEED_MAX_WAIT": "0.05",
            "ML_CANDLE_WATCH_INTERVAL": "50",
        }
        process, _port, _first = start_serve(root, serve_env, log="serve-feed.log", pairs=pairs)
        stack.callback(_stop, process)
        store = CandleStore(bundled_dir=root / "bundled", data_dir=root / "data")
        watch = FileWatch(
            {pair: store.ingested_path(pair, "1h") for pair in pairs}, period_s=0.005
        ).start()
        stack.callback(watch.stop)
        start_ms = open_ms_of(exchange.start)
        released = int((time.time() - exchange.t0) / seconds)
        first = released + FEED_WARMUP
        measured = [start_ms + k * HOUR_MS for k in range(first, first + FEED_CANDLES)]
        deadline = release_of(exchange, measured[-1]) + 30 + seconds
        while time.time() < deadline:
            if all(measured[-1] in watch.seen[p] for p in pairs) or process.poll() is not None:
                break
            time.sleep(0.1)
        every: list[float] = []
        median: list[float] = []
        missed = 0
        for open_ms in measured:
            seen = [watch.seen[p].get(open_ms) for p in pairs]
            # A (pair, candle) never seen by the deadline is counted and reported, not timed.
            missed += sum(s is None for s in seen)
            release = release_of(exchange, open_ms)
            times = [s - release for s in seen if s is not None]
            if times:
                every.append(max(times))
                median.append(statistics.median(times))
        if not every:
            raise RuntimeError(f"no pair's file showed a measured candle; see {root}")
        rss = _rss_mib(process.pid)
    return every, median, rss, missed


def _size(base: Path, count: int, start: str) -> Size:
    pairs = pair_names(count)
    root = base / f"n{count}"
    root.mkdir()
    (root / "bundled").symlink_to(base / "bundled")
    env = {
        **environment(base, pairs),
        "ML_DATA_DIR": str(root / "data"),
        "ML_DATABASE_URL": f"sqlite:///{root / 'service.db'}",
        "ML_CANDLE_WATCH_INTERVAL": "3600000",
    }
    with contextlib.ExitStack() as stack:
        process, port, first_s = start_serve(root, env, log="serve.log", pairs=pairs)
        stack.callback(_stop, process)
        _wait(lambda: _all_loaded(port, count), process, root / "serve.log", timeout=300)
        cached_s, after = _requests(port, pairs, start, root)
        rss = _rss_mib(process.pid)
    refresh = run_child(
        "bench.scale_pairs",
        ["--refresh", str(count), str(root / "refresh-cache")],
        env=env,
        root=root,
        log="refresh.log",
    )
    feed_root = root / "feed"
    feed_root.mkdir()
    (feed_root / "bundled").symlink_to(base / "bundled")
    feed_env = {
        **env,
        "ML_DATA_DIR": str(feed_root / "data"),
        "ML_DATABASE_URL": f"sqlite:///{feed_root / 'service.db'}",
    }
    every, _median, feed_rss, feed_missed = _feed_cycle(feed_root, pairs, start, feed_env)
    return Size(
        pairs=count,
        rss_mib=rss,
        first_prediction_s=first_s,
        refresh_first_s=float(refresh["first_s"]),
        refresh_s=float(refresh["steady_s"]),
        cached_p50_ms=cached_s * 1000,
        new_candle_ms=statistics.median(after) * 1000,
        feed_cycle_s=statistics.median(every),
        feed_cycle_max_s=max(every),
        feed_rss_mib=feed_rss,
        interval_s=interval(count),
        feed_missed=feed_missed,
    )


def _bench(base: Path) -> dict[str, Any]:
    from pipelines.candles.replay import prepare_replay_store

    largest = max(SIZES)
    names = pair_names(largest)
    # Enough candles after the start for the feed's warm-up and measured candles of the slowest
    # start, and the candles written by hand.
    start = replay_start(400)
    # The cut BTC file once (deterministic gzip: the same bytes under any name), then copies.
    prepare_replay_store(BUNDLED, base / "cut", pairs=["BTC"], start=start)
    (base / "bundled").mkdir()
    for pair in names:
        name = f"{pair}-USDT_1h.csv.gz"
        shutil.copyfile(base / "cut" / "BTC-USDT_1h.csv.gz", base / "bundled" / name)
    env = environment(base, names)
    registry = run_child(
        "bench.scale_pairs", ["--prepare", str(largest)], env=env, root=base, log="prepare.log"
    )
    sizes = [_size(base, count, start) for count in SIZES]
    return {"registry": registry, "sizes": sizes, "start": start}


# --- the report ----------------------------------------------------------------------------------


def _report(out: dict[str, Any], load: tuple[float, float]) -> str:
    sizes: list[Size] = out["sizes"]
    small = sizes[0]
    header = " | ".join(f"{s.pairs} pairs" for s in sizes)
    ratios = [s for s in sizes[1:]]
    ratio_header = " | ".join(f"{s.pairs}/{small.pairs}" for s in ratios)
    lines = [
        f"### Scale in pairs: one tiny LSTM served per pair (P001-lstm version "
        f"{out['registry']['version']} and its copies), {os.cpu_count()} CPUs (load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after)",
        "",
        f"| measure | {header} | {ratio_header} |",
        "|---|" + "---:|" * (len(sizes) + len(ratios)),
    ]

    def row(label: str, values: list[float], fmt: str) -> str:
        cells = " | ".join(format(v, fmt) for v in values)
        shown = " | ".join(f"{v / values[0]:.2f}x" if values[0] else "-" for v in values[1:])
        return f"| {label} | {cells} | {shown} |"

    lines += [
        f"| pairs | {' | '.join(str(s.pairs) for s in sizes)} | "
        + " | ".join(f"{s.pairs / small.pairs:.2f}x" for s in ratios)
        + " |",
        row("RSS of `tbml serve`, MiB", [s.rss_mib for s in sizes], ".0f"),
        row(
            "spawn to a real prediction of every pair, s (cold)",
            [s.first_prediction_s for s in sizes],
            ".2f",
        ),
        row(
            "registry refresh, steady (`ModelCache.refresh()` in-process), ms",
            [s.refresh_s * 1000 for s in sizes],
            ".1f",
        ),
        row(
            "registry refresh, first (copies and opens every bundle), s",
            [s.refresh_first_s for s in sizes],
            ".2f",
        ),
        row("`GET /api/predictions`, cached, p50 ms", [s.cached_p50_ms for s in sizes], ".2f"),
        row(
            f"`GET /api/predictions`, first after a new candle, median of {NEW_CANDLES} ms",
            [s.new_candle_ms for s in sizes],
            ".1f",
        ),
        row(
            f"feed cycle: release to the candle in every pair's file, median of {FEED_CANDLES}, s",
            [s.feed_cycle_s for s in sizes],
            ".3f",
        ),
        row("feed cycle, slowest candle, s", [s.feed_cycle_max_s for s in sizes], ".3f"),
        row(
            f"feed cycle: (pair, candle) missing at the deadline, of {FEED_CANDLES} x pairs",
            [float(s.feed_missed) for s in sizes],
            ".0f",
        ),
        row("RSS of `tbml serve` with the feed on, MiB", [s.feed_rss_mib for s in sizes], ".0f"),
    ]
    largest = sizes[-1]
    rss_ratio = largest.rss_mib / small.rss_mib
    lines += [
        "",
        "| aim | measured | met |",
        "|---|---:|---|",
        f"| RSS with {largest.pairs} pairs within {AIM_RSS_RATIO:g}x that with {small.pairs} | "
        f"{rss_ratio:.2f}x | {'yes' if rss_ratio <= AIM_RSS_RATIO else 'no'} |",
    ]
    growth = [
        ("start", [s.first_prediction_s for s in sizes]),
        ("refresh", [s.refresh_s for s in sizes]),
        ("cached request", [s.cached_p50_ms for s in sizes]),
        ("request after a new candle", [s.new_candle_ms for s in sizes]),
        ("feed cycle", [s.feed_cycle_s for s in sizes]),
    ]
    for label, values in growth if len(sizes) > 1 else []:
        worst = max(
            (v / values[0]) / (s.pairs / small.pairs)
            for v, s in zip(values[1:], sizes[1:], strict=True)
        )
        lines.append(
            f"| {label}: grows at most linearly in pairs | worst cost ratio / pair ratio "
            f"{worst:.2f} | {'yes' if worst <= 1.0 else 'no'} |"
        )
    lines += [
        "",
        f"- Replay from {out['start']}, one candle every "
        + ", ".join(f"{s.interval_s:g} s ({s.pairs} pairs)" for s in sizes)
        + f"; {FEED_WARMUP} candles of warm-up after the service's start, then {FEED_CANDLES}"
        " measured; the feed fetches each pair at least every 50 ms (ML_FEED_MAX_WAIT=0.05).",
        f"- Registering the {max(s.pairs for s in sizes) - 1} copies took "
        f"{out['registry']['register_s']:.1f} s.",
        "- Command: `python -m bench.scale_pairs` (BENCH_SCALE_SIZES="
        + ",".join(str(s) for s in SIZES)
        + ").",
    ]
    return "\n".join(lines)


def run() -> str:
    """Prepare, then measure each size; the markdown report."""
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        out = _bench(Path(tmp))
    return _report(out, (before, os.getloadavg()[0]))


def _sizes(text: str) -> tuple[int, ...]:
    """`--sizes`: comma-separated pair counts, each 1..999."""
    try:
        sizes = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if not sizes or not all(1 <= n <= 999 for n in sizes):
        raise argparse.ArgumentTypeError(f"pair counts must be 1..999, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    # The options replace the module defaults.
    global SIZES, CACHED_REQUESTS, NEW_CANDLES, REFRESHES, FEED_CANDLES, INTERVAL_PER_PAIR_S
    args = sys.argv[1:] if argv is None else argv
    # The children this bench runs (`run_child`): not options, and not in --help.
    if args[:1] == ["--prepare"]:
        print(json.dumps(prepare_registry(pair_names(int(args[1])))))
        return 0
    if args[:1] == ["--refresh"]:
        print(json.dumps(time_refresh(pair_names(int(args[1])), args[2])))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale_pairs",
        description="The service as the number of pairs grows (4, 25, 100 by default), one tiny "
        "LSTM served per pair: memory, start to a real prediction of every pair, registry "
        "refresh, cached requests and the first after a new candle, and the feed cycle, each "
        "as a ratio to the first size, against the aims of at most 2x its memory at the "
        "largest and at most linear growth.",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=",".join(map(str, SIZES)),
        help="comma-separated pair counts (BENCH_SCALE_SIZES; default %(default)s)",
    )
    parser.add_argument(
        "--cached-requests",
        type=int,
        default=CACHED_REQUESTS,
        help=f"cached `GET /api/predictions` timed, at most (within {CACHED_MAX_S:g} s) "
        "(BENCH_SCALE_REQUESTS; default %(default)s)",
    )
    parser.add_argument(
        "--new-candles",
        type=int,
        default=NEW_CANDLES,
        help="new candles written, each followed by a timed request "
        "(BENCH_SCALE_NEW_CANDLES; default %(default)s)",
    )
    parser.add_argument(
        "--steady-refreshes",
        type=int,
        default=REFRESHES,
        help="steady registry refreshes timed after the first "
        "(BENCH_SCALE_REFRESHES; default %(default)s)",
    )
    parser.add_argument(
        "--feed-candles",
        type=int,
        default=FEED_CANDLES,
        help="replayed candles measured through the feed "
        "(BENCH_SCALE_FEED_CANDLES; default %(default)s)",
    )
    parser.add_argument(
        "--interval-per-pair",
        type=float,
        default=INTERVAL_PER_PAIR_S,
        help=f"seconds per replayed candle and pair, at least {MIN_INTERVAL_S:g} s a candle "
        "(BENCH_SCALE_INTERVAL_PER_PAIR; default %(default)s)",
    )
    options = parser.parse_args(args)
    if options.steady_refreshes != REFRESHES:  # the `--refresh` child reads it from the env
        os.environ["BENCH_SCALE_REFRESHES"] = str(options.steady_refreshes)
    SIZES, CACHED_REQUESTS = options.sizes, options.cached_requests
    NEW_CANDLES, REFRESHES = options.new_candles, options.steady_refreshes
    FEED_CANDLES, INTERVAL_PER_PAIR_S = options.feed_candles, options.interval_per_pair
    print(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
