"""The live loop: a candle closing at the exchange to its prediction arriving on a WebSocket.

Self-contained: a temporary tracking store, candle store and service database. A tiny real BTC
model (the LSTM, 1 layer of 8 units over 12 candles, 1 epoch on the newest `TRAIN_ROWS` candles
before the replay starts) is trained and promoted in a child process. The bundled BTC candles are
cut at a start time (`prepare_replay_store`); a replay exchange (`ReplayServer`, in a thread of
this process) serves the rest of them, one candle closing every `BENCH_LIVE_INTERVAL` seconds of
wall time. `tbml serve` runs as a child with its live feed on (ML_FEED=true, ML_EXCHANGE_URL at
the replay, no delay, a fetch at least every 50 ms) and its candle watcher every 50 ms.

For each of `BENCH_LIVE_CANDLES` candles (after a warm-up), times on this machine's wall clock:

- release: when the replay's clock closes the candle (its start plus k intervals);
- file: when the candle is first seen in the ingested file (a thread here `stat`s it every
  millisecond and reads its last line on a change): the feed's part;
- message: when its prediction arrives on a `websockets.sync.client` connection to
  `/ws/predictions?pairs=BTC`: the watcher's part (the file to the pushed message);
- the request after it: right after each message, one `GET /api/predictions/BTC` on a keep-alive
  connection, and one request to the HTTP floor (a FastAPI app answering a constant, as
  `bench.predict_latency` runs it) on its own keep-alive connection, in alternating order.

Run alone with `python -m bench.live_loop` (`--help` for the options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.predict_latency import (
    Target,
    _Connection,
    _free_port,
    _get_json,
    _spawn,
    _stop,
    _tail,
    _wait,
)

PAIR = "BTC"
CANDLES = int(os.environ.get("BENCH_LIVE_CANDLES", "200"))
INTERVAL_S = float(os.environ.get("BENCH_LIVE_INTERVAL", "0.5"))
# Candles released before measuring starts (the service catching up after its start), and
# after the last measured one (so the last one is not cut short).
WARMUP_CANDLES = 10
SPARE_CANDLES = 5
TRAIN_ROWS = 400
TINY: dict[str, Any] = {
    "model_type": "lstm",
    "epochs": 1,
    "sequence_length": 12,
    "units": 8,
    "layers": 1,
    "max_rows": TRAIN_ROWS,
}
AIM_REQUEST_RATIO = 1.2
BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parent.parent
BUNDLED = PROJECT / "data" / "ohlcv"
HOUR_MS = 3_600_000


# --- set-up shared with bench.scale_pairs -------------------------------------------------------


def environment(root: Path, pairs: list[str]) -> dict[str, str]:
    """The children's environment: every store under `root`, the bundled candles cut at the
    replay's start in `root/bundled`, `pairs` served with the LSTM, no retraining."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ML_", "MLFLOW_", "TRADING_")) and key not in ("PORT", "HOST")
    }
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(PROJECT),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "ML_ARTIFACT_ROOT": str(root / "mlruns"),
            "ML_BUNDLED_DATA_DIR": str(root / "bundled"),
            "ML_DATA_DIR": str(root / "data"),
            "ML_DATABASE_URL": f"sqlite:///{root / 'service.db'}",
            "ML_PAIRS": ",".join(pairs),
            "ML_ENABLED_MODELS": "lstm",
            "ML_RETRAIN_POLICY": "false",
            # The replay's candles are from the past: neither they nor the model count as stale.
            "ML_STALE_AFTER": "10000000",
            "ML_MODEL_MAX_AGE_HOURS": "1000000",
            "ML_FEED": "false",
        }
    )
    return env


def train_tiny(pair: str) -> str:
    """In the training child: one tiny real LSTM for `pair`, promoted; its version."""
    from mlproject.config import TrainConfig
    from mlproject.train import train
    from pipelines.settings import get_settings

    outcome = train(TrainConfig(pair=pair, **TINY), settings=get_settings())
    if outcome.promotion != "promoted":
        raise RuntimeError(f"{pair}: {outcome.promotion}: {outcome.reason}")
    return str(outcome.version)


def run_child(module: str, args: list[str], *, env: dict[str, str], root: Path, log: str) -> Any:
    """`python -m module args` in `root`; the JSON of its last output line."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    (root / log).write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{_tail(root / log)}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def replay_start(candles_needed: int) -> str:
    """An ISO start time leaving `candles_needed` bundled BTC candles after it."""
    from pipelines.candles.validate import read_candle_file

    frame = read_candle_file(BUNDLED / "BTC-USDT_1h.csv.gz")
    stamp = frame.index[-1 - candles_needed]
    return str(stamp.strftime("%Y-%m-%dT%H:%M:%SZ"))


def start_serve(
    root: Path, env: dict[str, str], *, log: str, pairs: list[str], timeout: float = 300
) -> tuple[subprocess.Popen[bytes], int, float]:
    """Spawn `tbml serve`; wait until every pair has a real (non-fallback) prediction.

    Returns the process, its port and the seconds from spawning to that moment.
    """
    port = _free_port()
    started = time.perf_counter()
    process = _spawn(
        [str(BIN / "tbml"), "serve", "--port", str(port)], env=env, cwd=root, log=root / log
    )

    def every_pair_real() -> bool:
        status, body = _get_json(port, "/api/predictions", timeout=60)
        if status != 200:
            return False
        answers = body["predictions"]
        return all(answers.get(p, {}).get("fallback") is False for p in pairs)

    try:
        _wait(every_pair_real, process, root / log, timeout=timeout)
    except BaseException:
        _stop(process)
        raise
    return process, port, time.perf_counter() - started


def newest_open_ms(path: Path) -> int | None:
    """Open time (epoch ms) of the last candle line of a candle CSV, None if it has none."""
    times = tail_open_ms(path)
    return times[-1] if times else None


def tail_open_ms(path: Path, *, tail_bytes: int = 4096) -> list[int]:
    """Open times (epoch ms) of the candle lines in the last `tail_bytes` of a candle CSV (the
    first, possibly partial, line of the tail left out), oldest first."""
    import pandas as pd

    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - tail_bytes))
            lines = handle.read().decode().strip().splitlines()
    except FileNotFoundError:
        return []
    if size > tail_bytes:
        lines = lines[1:]
    return [
        int(pd.Timestamp(line.split(",", 1)[0]).value // 1_000_000)
        for line in lines
        if line and not line.startswith("timestamp")
    ]


class FileWatch:
    """A thread that `stat`s files every `period_s` and records, per file and candle open time
    (the candles near the end of the file), the wall time (time.time()) it was first seen."""

    def __init__(self, paths: dict[str, Path], *, period_s: float) -> None:
        self.paths = paths
        self.period_s = period_s
        self.seen: dict[str, dict[int, float]] = {name: {} for name in paths}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="file-watch", daemon=True)

    def start(self) -> FileWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        stamps: dict[str, tuple[int, int, int] | None] = dict.fromkeys(self.paths)
        while not self._stop.is_set():
            for name, path in self.paths.items():
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
                if stamp == stamps[name]:
                    continue
                now = time.time()
                stamps[name] = stamp
                # Every candle the change brought (a fetch may append several at once).
                for open_ms in tail_open_ms(path):
                    self.seen[name].setdefault(open_ms, now)
            time.sleep(self.period_s)


def open_ms_of(stamp: Any) -> int:
    """Epoch ms of a pandas timestamp."""
    return int(stamp.as_unit("ns").value) // 1_000_000


def release_of(exchange: Any, open_ms: int) -> float:
    """Wall time (epoch s) at which the replay closes the candle opening at `open_ms`."""
    import pandas as pd

    return float(exchange.release_time(pd.Timestamp(open_ms, unit="ms", tz="UTC")))


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (1..99) of `values`; the value itself when there is one."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


# --- the measurement ----------------------------------------------------------------------------


@dataclass
class _Arrival:
    received: float  # wall time of the WebSocket message
    get_s: float
    floor_s: float


@dataclass
class _Client:
    """The WebSocket client thread: records each message's arrival, then the two requests."""

    ws_url: str
    service: Target
    floor: Target
    arrivals: dict[int, _Arrival] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from websockets.sync.client import connect

        service = _Connection(self.service.port)
        floor = _Connection(self.floor.port)
        try:
            with connect(self.ws_url, open_timeout=30, max_size=2**20) as ws:
                self.connected.set()
                turn = 0
                while not self.stop.is_set():
                    try:
                        data = ws.recv(timeout=0.5)
                    except TimeoutError:
                        continue
                    received = time.time()
                    candle = int(json.loads(data)["candleTime"])
                    if candle in self.arrivals:
                        continue
                    timings = {}
                    order = (("get", service, self.service), ("floor", floor, self.floor))
                    for name, conn, target in order if turn % 2 == 0 else order[::-1]:
                        started = time.perf_counter()
                        conn.call(target)
                        timings[name] = time.perf_counter() - started
                    turn += 1
                    self.arrivals[candle] = _Arrival(received, timings["get"], timings["floor"])
        except BaseException as exc:
            self.errors.append(exc)
            self.connected.set()
        finally:
            service.close()
            floor.close()


def _bench(root: Path) -> dict[str, Any]:
    from pipelines.candles.replay import ReplayExchange, ReplayServer, prepare_replay_store

    total = WARMUP_CANDLES + CANDLES + SPARE_CANDLES
    start = replay_start(total + 5)
    env = environment(root, [PAIR])
    prepare_replay_store(BUNDLED, root / "bundled", pairs=[PAIR], start=start)
    version = run_child("bench.live_loop", ["--train", PAIR], env=env, root=root, log="train.log")
    out: dict[str, Any] = {"version": version, "start": start}
    with contextlib.ExitStack() as stack:
        port = _free_port()
        floor = _spawn(
            [sys.executable, "-m", "bench.predict_latency", "--floor", str(port)],
            env=env,
            cwd=root,
            log=root / "floor.log",
        )
        stack.callback(_stop, floor)
        path = "/api/predictions/BTC"
        _wait(lambda: _get_json(port, path)[0] == 200, floor, root / "floor.log", timeout=60)
        floor_target = Target("floor", port, "GET", path)

        exchange = ReplayExchange.from_bundled(
            BUNDLED, pairs=[PAIR], start=start, interval_s=INTERVAL_S
        )
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
        process, serve_port, first_s = start_serve(root, serve_env, log="serve.log", pairs=[PAIR])
        stack.callback(_stop, process)
        out["first_prediction_s"] = first_s

        from pipelines.candles.store import CandleStore

        store = CandleStore(bundled_dir=root / "bundled", data_dir=root / "data")
        watch = FileWatch({PAIR: store.ingested_path(PAIR, "1h")}, period_s=0.001).start()
        stack.callback(watch.stop)
        client = _Client(
            f"ws://127.0.0.1:{serve_port}/ws/predictions?pairs={PAIR}",
            Target("service", serve_port, "GET", path),
            floor_target,
        )
        thread = threading.Thread(target=client.run, name="ws-client", daemon=True)
        thread.start()
        client.connected.wait(60)
        if client.errors:
            raise RuntimeError(f"WebSocket client: {client.errors[0]!r}")
        # The candles to measure: released after the service and the client are up.
        start_ms = open_ms_of(exchange.start)
        released = int((time.time() - exchange.t0) / INTERVAL_S)
        first = released + WARMUP_CANDLES
        measured = [start_ms + k * HOUR_MS for k in range(first, first + CANDLES)]
        deadline = release_of(exchange, measured[-1]) + 30
        while time.time() < deadline:
            if set(measured) <= client.arrivals.keys() or process.poll() is not None:
                break
            if client.errors:
                break
            time.sleep(0.2)
        client.stop.set()
        thread.join(10)
        if client.errors:
            raise RuntimeError(
                f"WebSocket client: {client.errors[0]!r}\n{_tail(root / 'serve.log')}"
            )
        out["rows"] = [
            (release_of(exchange, o), watch.seen[PAIR].get(o), client.arrivals.get(o))
            for o in measured
        ]
    return out


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.median(values) * 1000, percentile(values, 99) * 1000


def _report(out: dict[str, Any], load: tuple[float, float]) -> str:
    rows: list[tuple[float, float | None, _Arrival | None]] = out["rows"]
    complete = [(r, s, a) for r, s, a in rows if s is not None and a is not None]
    feed = [s - r for r, s, _ in complete]
    push = [a.received - s for _, s, a in complete]
    total = [a.received - r for r, _, a in complete]
    gets = [a.get_s for _, _, a in complete]
    floors = [a.floor_s for _, _, a in complete]
    missing = len(rows) - len(complete)
    lines = [
        f"### Live loop: BTC-lstm version {out['version']}, {len(rows)} candles replayed one per "
        f"{INTERVAL_S:g} s from {out['start']}, {os.cpu_count()} CPUs (load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after)",
        "",
        "| stage | p50 ms | p99 ms | candles |",
        "|---|---:|---:|---:|",
    ]
    for label, values in (
        ("release → candle in the ingested file (the feed: poll, fetch, check, write)", feed),
        ("file → prediction on the WebSocket (watcher, features, ONNX, push)", push),
        ("release → prediction on the WebSocket (the whole loop)", total),
        ("`GET /api/predictions/BTC` right after the message", gets),
        ("HTTP floor (constant FastAPI), same moment", floors),
    ):
        p50, p99 = _ms(values)
        lines.append(f"| {label} | {p50:.2f} | {p99:.2f} | {len(values)} |")
    get_p50, get_p99 = _ms(gets)
    floor_p50, floor_p99 = _ms(floors)
    ratio = get_p50 / floor_p50
    lines += [
        "",
        "| aim | measured | met |",
        "|---|---:|---|",
        f"| request after a candle's arrival, p50 within {AIM_REQUEST_RATIO}x the floor | "
        f"{ratio:.2f}x (p99 {get_p99 / floor_p99:.2f}x) | "
        f"{'yes' if ratio <= AIM_REQUEST_RATIO else 'no'} |",
        "",
        f"- Candles without a file sighting or a message: {missing} of {len(rows)}.",
        f"- The feed's share of the whole loop (p50): "
        f"{statistics.median(feed) / statistics.median(total) * 100:.0f} %; ML_FEED_MAX_WAIT=0.05 "
        "makes it fetch at least every 50 ms, so about 25 ms of it is waiting for the next fetch.",
        f"- `tbml serve` spawn to first real prediction: {out['first_prediction_s']:.2f} s.",
        "- Command: `python -m bench.live_loop` "
        f"(BENCH_LIVE_CANDLES={CANDLES}, BENCH_LIVE_INTERVAL={INTERVAL_S:g}).",
    ]
    return "\n".join(lines)


def run() -> str:
    """Train, replay, serve, measure; the markdown report."""
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        out = _bench(Path(tmp))
    return _report(out, (before, os.getloadavg()[0]))


def main(argv: list[str] | None = None) -> int:
    global CANDLES, INTERVAL_S  # the options replace the module defaults
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--train"]:  # the training child, run by `_bench`: not an option
        print(json.dumps(train_tiny(args[1])))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.live_loop",
        description="The live loop's latency, from a candle closing at a replay exchange to its "
        "prediction on a WebSocket (the feed's part and the watcher's), and the request right "
        "after each message against the HTTP floor (a FastAPI app answering a constant).",
    )
    parser.add_argument(
        "--candles",
        type=int,
        default=CANDLES,
        help="candles measured, after a warm-up (BENCH_LIVE_CANDLES; default %(default)s)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=INTERVAL_S,
        help="seconds of wall time per replayed candle (BENCH_LIVE_INTERVAL; default %(default)s)",
    )
    options = parser.parse_args(args)
    CANDLES, INTERVAL_S = options.candles, options.interval
    print(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
