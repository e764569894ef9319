"""Prediction latency: this service (cached, uncached), `mlflow models serve`, and the HTTP floor.

Self-contained: a temporary tracking store, model cache and service database; four tiny real
models (the default LSTM, 2 x 50 units over 60 candles of every feature, 1 epoch on the newest
`BENCH_LATENCY_TRAIN_ROWS` candles) are trained and promoted for BTC, ETH, XMR and RVN, so the
service holds four production models. The same registered BTC version is asked of every server:

- floor: a FastAPI app under uvicorn (same settings as `tbml serve`) whose endpoint returns a
  constant JSON body: what HTTP alone costs on this machine;
- service, cached: `tbml serve`, `GET /api/predictions/BTC`; the same newest candle makes every
  request a prediction-cache hit;
- service, uncached: `tbml serve` with ML_PREDICTION_CACHE_TTL=0, so every request runs the
  ONNX model on the newest window and records a prediction-history row (the service's writer
  thread inserts them in batches); the window's features come from the feature cache, keyed by
  the newest candle (they change once an hour, when a candle closes);
- service, cold: both caches off (ML_FEATURE_CACHE_TTL=0 too), so every request also computes
  the features of the newest candles: what the first request after a new candle costs;
- mlflow: `mlflow models serve -m models:/BTC-lstm/<v> --env-manager local` (the registered
  pyfunc model, on onnxruntime), sent the newest candles the service predicts from (enough for
  the same probability) as `{"dataframe_split": ...}`: it computes the features per request.

Each server runs in its own process on a loopback port (all five throughout, idle while another
is measured) and is measured by the same client, in `BENCH_LATENCY_ROUNDS` rounds over all of
them so that a change of load on a shared machine falls on every server: one persistent
connection, a warm-up, then sequential requests for p50/p99; then `BENCH_LATENCY_CLIENTS`
concurrent keep-alive connections for requests per second. Also: the
service's RSS with the four pairs loaded, `mlflow models serve`'s RSS, and the time from
spawning `tbml serve` to its first real (non-fallback) prediction, cold (bundles downloaded from
the registry) and on restart (the local model copy). Run alone with
`python -m bench.predict_latency` (`--help` for the options).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

PAIRS = ("BTC", "ETH", "XMR", "RVN")
TRAIN_ROWS = int(os.environ.get("BENCH_LATENCY_TRAIN_ROWS", "3000"))
# Rounds over all servers; per round and server, a warm-up, then a sequential series of up to
# REQUESTS requests that a slow server ends after MAX_SECONDS (with at least MIN_REQUESTS).
ROUNDS = int(os.environ.get("BENCH_LATENCY_ROUNDS", "3"))
REQUESTS = int(os.environ.get("BENCH_LATENCY_REQUESTS", "1000"))
MAX_SECONDS = float(os.environ.get("BENCH_LATENCY_MAX_SECONDS", "10"))
MIN_REQUESTS = 100
WARMUP = 50
CLIENTS = int(os.environ.get("BENCH_LATENCY_CLIENTS", "4"))
RPS_SECONDS = float(os.environ.get("BENCH_LATENCY_RPS_SECONDS", "5"))
# The aims: multiples of the floor's p50, MB (10**6 bytes), seconds.
AIM_UNCACHED, AIM_CACHED, AIM_RSS_MB, AIM_FIRST_S = 3.0, 1.5, 250.0, 3.0
BIN = Path(sys.executable).parent
# What the floor answers: a body of the same shape and size as the service's.
FLOOR_BODY = (
    b'{"pair":"BTC","prediction":{"prediction":0.494781,"confidence":0.505219,'
    b'"direction":"down","signal":"HOLD","modelType":"lstm"},"modelVersion":"1",'
    b'"candleTime":1703977200000,"ensemble":false,"fallback":false,"unproven":true,'
    b'"reason":"production version does not beat its strongest baseline on its test window; '
    b'signal held at HOLD (ML_SERVE_UNPROVEN=false)","cached":true,"cacheAge":1234,'
    b'"responseTime":0.05,"timestamp":1704067200000}'
)


@dataclass(frozen=True)
class Target:
    """One request, repeated: where it goes and what a good answer looks like."""

    label: str
    port: int
    method: str
    path: str
    body: bytes | None = None
    check: Callable[[bytes], None] | None = None


@dataclass(frozen=True)
class Measured:
    label: str
    p50_ms: float
    p99_ms: float
    requests: int
    rps: float
    rss_mib: float | None
    round_p50_ms: tuple[float, ...]  # each round's p50: how much the load moved them


# --- processes ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _spawn(
    argv: list[str], *, env: dict[str, str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (a server and its workers), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
            return


def _rss_mib(pid: int) -> float:
    """RSS of a process and all its descendants, MiB."""
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-30:])


# --- the client ---------------------------------------------------------------------------------


class _Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def call(self, target: Target) -> bytes:
        headers = {"Content-Type": "application/json"} if target.body is not None else {}
        self.conn.request(target.method, target.path, body=target.body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{target.label}: HTTP {response.status}: {data[:300]!r}")
        return data

    def close(self) -> None:
        self.conn.close()


def _latency(target: Target) -> list[float]:
    """Sequential requests on one connection after a warm-up; seconds per request."""
    conn = _Connection(target.port)
    try:
        last = b""
        for _ in range(WARMUP):
            last = conn.call(target)
        if target.check is not None:
            target.check(last)
        samples: list[float] = []
        deadline = time.perf_counter() + MAX_SECONDS
        while len(samples) < REQUESTS and (
            time.perf_counter() < deadline or len(samples) < MIN_REQUESTS
        ):
            started = time.perf_counter()
            last = conn.call(target)
            samples.append(time.perf_counter() - started)
        if target.check is not None:
            target.check(last)
        return samples
    finally:
        conn.close()


def _throughput(target: Target) -> float:
    """Requests per second from CLIENTS concurrent keep-alive connections."""
    counts = [0] * CLIENTS
    errors: list[BaseException] = []
    barrier = threading.Barrier(CLIENTS + 1)
    stop = threading.Event()

    def client(index: int) -> None:
        conn = _Connection(target.port)
        try:
            conn.call(target)
            barrier.wait()
            while not stop.is_set():
                conn.call(target)
                counts[index] += 1
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(RPS_SECONDS)
    stop.set()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{target.label}: {errors[0]}")
    return sum(counts) / (time.perf_counter() - started)


def _measure_all(targets: list[tuple[Target, subprocess.Popen[bytes]]]) -> list[Measured]:
    """Every target in turn, ROUNDS times, so that a change of load on the shared machine
    falls on all of them; latencies pooled over the rounds, throughput the median round."""
    samples: dict[str, list[float]] = {t.label: [] for t, _ in targets}
    rounds: dict[str, list[float]] = {t.label: [] for t, _ in targets}
    rates: dict[str, list[float]] = {t.label: [] for t, _ in targets}
    for _ in range(ROUNDS):
        for target, _process in targets:
            series = _latency(target)
            samples[target.label] += series
            rounds[target.label].append(statistics.median(series) * 1000)
            rates[target.label].append(_throughput(target))
    measured = []
    for target, process in targets:
        series = samples[target.label]
        measured.append(
            Measured(
                target.label,
                statistics.median(series) * 1000,
                statistics.quantiles(series, n=100)[98] * 1000,
                len(series),
                statistics.median(rates[target.label]),
                _rss_mib(process.pid),
                tuple(rounds[target.label]),
            )
        )
    return measured


def _status(port: int, path: str, timeout: float = 10.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _get_json(port: int, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def _wait(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, *, timeout: float
) -> float:
    """Poll `ready` until true; seconds waited. Fails with the log if the process ends."""
    started = time.perf_counter()
    while True:
        with contextlib.suppress(OSError, http.client.HTTPException, json.JSONDecodeError):
            if ready():
                return time.perf_counter() - started
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: exited {process.returncode}\n{_tail(log)}")
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"{log.name}: not ready after {timeout:.0f} s\n{_tail(log)}")
        time.sleep(0.01)


# --- the servers --------------------------------------------------------------------------------


def _environment(root: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ML_", "MLFLOW_")) and key not in ("PORT", "HOST")
    }
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "ML_ARTIFACT_ROOT": str(root / "mlruns"),
            "ML_DATA_DIR": str(root / "data"),
            "ML_DATABASE_URL": f"sqlite:///{root / 'service.db'}",
            "ML_PAIRS": ",".join(PAIRS),
            "ML_ENABLED_MODELS": "lstm",
        }
    )
    return env


def train_models() -> dict[str, str]:
    """In the training child: one tiny real model per pair, promoted; {pair: version}."""
    from mlproject.config import TrainConfig
    from mlproject.train import train
    from pipelines.settings import get_settings

    settings = get_settings()
    versions = {}
    for pair in PAIRS:
        config = TrainConfig.from_settings(settings, pair=pair, epochs=1, max_rows=TRAIN_ROWS)
        outcome = train(config, settings=settings)
        if outcome.promotion != "promoted":
            raise RuntimeError(f"{pair}: {outcome.promotion}: {outcome.reason}")
        versions[pair] = str(outcome.version)
    return versions


def serve_floor(port: int) -> None:
    """In the floor child: a constant answer under uvicorn, configured as `tbml serve` does."""
    import uvicorn
    from fastapi import FastAPI, Response

    app = FastAPI()

    @app.get("/api/predictions/{pair}")
    async def constant(pair: str) -> Response:
        return Response(FLOOR_BODY, media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", access_log=False)


def _window(root: Path, version: str) -> tuple[bytes, float, int]:
    """The newest BTC candles as mlflow's /invocations body (as many as the service reads);
    also the bundle's own probability for the newest window and the number of features."""
    from mlflow import MlflowClient

    from pipelines.candles.store import CandleStore
    from pipelines.features.compute import latest_features
    from pipelines.modelbundle import download_bundle
    from pipelines.pyfunc_model import exact_candles, example_candles
    from pipelines.settings import Settings

    settings = Settings(_env_file=None, data_dir=root / "data")
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    bundle = download_bundle(client, name="BTC-lstm", version=version, dst=root / "bench-bundle")
    candles = CandleStore.from_settings(settings).load("BTC", settings.timeframe)
    rows = latest_features(candles, rows=bundle.sequence_length, spec=bundle.spec)
    raw = rows.to_numpy(dtype="float64")[None, :, :]
    frame = example_candles(candles, rows=exact_candles(bundle))
    body = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode()
    return body, float(bundle.predict_proba(raw)[0]), raw.shape[2]


@dataclass
class _Service:
    process: subprocess.Popen[bytes]
    port: int
    first_prediction_s: float
    body: dict[str, Any]


def _start_service(root: Path, env: dict[str, str], *, log: Path) -> _Service:
    """Spawn `tbml serve` and wait for its first real prediction of BTC."""
    port = _free_port()
    started = time.perf_counter()
    process = _spawn([str(BIN / "tbml"), "serve", "--port", str(port)], env=env, cwd=root, log=log)
    answer: dict[str, Any] = {}

    def real_prediction() -> bool:
        status, body = _get_json(port, "/api/predictions/BTC")
        answer.update(body if status == 200 else {})
        return status == 200 and body.get("fallback") is False

    _wait(real_prediction, process, log, timeout=180)
    first = time.perf_counter() - started

    def all_loaded() -> bool:
        status, health = _get_json(port, "/api/health")
        slots = [m["lstm"]["state"] for m in health["models"].values()]
        return bool(status == 200 and slots == ["loaded"] * 4 and health["registry"]["lastRefresh"])

    # The poll after a restart confirms the local copy with the registry: let it finish first.
    _wait(all_loaded, process, log, timeout=120)
    return _Service(process, port, first, answer)


def _expect(cached: bool) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        body = json.loads(data)
        if body["fallback"] or body["cached"] is not cached:
            raise RuntimeError(f"expected cached={cached} and a real model, got {body}")

    return check


def _bench(root: Path) -> dict[str, Any]:
    env = _environment(root)
    train_log = root / "train.log"
    here = {**env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "bench.predict_latency", "--train"],
        env=here,
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    train_log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"training failed:\n{_tail(train_log)}")
    version = json.loads(result.stdout.strip().splitlines()[-1])["BTC"]
    window, bundle_p, n_features = _window(root, version)
    out: dict[str, Any] = {"version": version, "features": n_features, "bundle_p": bundle_p}
    predictions = "/api/predictions/BTC"
    with contextlib.ExitStack() as servers:
        port = _free_port()
        log = root / "floor.log"
        floor = _spawn(
            [sys.executable, "-m", "bench.predict_latency", "--floor", str(port)],
            env=here,
            cwd=root,
            log=log,
        )
        servers.callback(_stop, floor)
        _wait(lambda: _get_json(port, predictions)[0] == 200, floor, log, timeout=60)
        targets = [(Target("HTTP floor: FastAPI, constant JSON", port, "GET", predictions), floor)]

        # The first start finds no local model copy and downloads the bundles from the
        # registry; the second (the uncached instance) restarts from the local copy.
        cached = _start_service(root, env, log=root / "serve-cached.log")
        servers.callback(_stop, cached.process)
        uncached_env = {**env, "ML_PREDICTION_CACHE_TTL": "0"}
        uncached = _start_service(root, uncached_env, log=root / "serve-uncached.log")
        servers.callback(_stop, uncached.process)
        cold_env = {**uncached_env, "ML_FEATURE_CACHE_TTL": "0"}
        cold = _start_service(root, cold_env, log=root / "serve-cold.log")
        servers.callback(_stop, cold.process)
        out.update(
            first_cold_s=cached.first_prediction_s,
            first_restart_s=uncached.first_prediction_s,
            served_version=cached.body.get("modelVersion"),
            served_p=cached.body["prediction"]["prediction"],
        )
        targets += [
            (
                Target(
                    "trading-bot-ml, cached",
                    cached.port,
                    "GET",
                    predictions,
                    None,
                    _expect(cached=True),
                ),
                cached.process,
            ),
            (
                Target(
                    "trading-bot-ml, uncached (ONNX + history row)",
                    uncached.port,
                    "GET",
                    predictions,
                    None,
                    _expect(cached=False),
                ),
                uncached.process,
            ),
            (
                Target(
                    "trading-bot-ml, cold (features + ONNX + history row)",
                    cold.port,
                    "GET",
                    predictions,
                    None,
                    _expect(cached=False),
                ),
                cold.process,
            ),
        ]

        port = _free_port()
        log = root / "mlflow-serve.log"
        argv = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/BTC-lstm/{version}"]
        argv += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
        mlflow_serve = _spawn(argv, env=env, cwd=root, log=log)
        servers.callback(_stop, mlflow_serve)
        _wait(lambda: _status(port, "/ping") == 200, mlflow_serve, log, timeout=300)
        probabilities: list[float] = []

        def answered(data: bytes) -> None:
            probabilities.append(float(json.loads(data)["predictions"][0]["probability"]))

        label = "`mlflow models serve` (pyfunc: candles, features + ONNX)"
        targets.append(
            (Target(label, port, "POST", "/invocations", window, answered), mlflow_serve)
        )
        out["rows"] = _measure_all(targets)
        workers = psutil.Process(mlflow_serve.pid).children(recursive=True)
        out["mlflow_worker_mib"] = max(p.memory_info().rss for p in workers) / 2**20
        out["mlflow_p"] = probabilities[-1]
    return out


# --- the report ---------------------------------------------------------------------------------


def _report(out: dict[str, Any], load: tuple[float, float]) -> str:
    rows: list[Measured] = out["rows"]
    floor, cached, uncached, cold, mlflow = rows
    lines = [
        f"### Prediction latency: BTC-lstm version {out['version']} (60 x {out['features']} "
        f"window), each server its own process on loopback, {os.cpu_count()} CPUs (load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after)",
        "",
        f"| server | p50 ms | p99 ms | requests | req/s ({CLIENTS} clients) | p50 / floor "
        "| RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row.label} | {row.p50_ms:.2f} | {row.p99_ms:.2f} | {row.requests} | "
            f"{row.rps:,.0f} | {row.p50_ms / floor.p50_ms:.1f}x | "
            f"{row.rss_mib:,.0f} |"
        )
    service_rss = max(cached.rss_mib or 0.0, uncached.rss_mib or 0.0, cold.rss_mib or 0.0)
    aims = [
        (
            "uncached p50 <= 3x floor",
            f"{uncached.p50_ms / floor.p50_ms:.1f}x",
            uncached.p50_ms <= AIM_UNCACHED * floor.p50_ms,
        ),
        (
            "cold p50 <= 3x floor (not an aim of the issue: features recomputed per request)",
            f"{cold.p50_ms / floor.p50_ms:.1f}x",
            cold.p50_ms <= AIM_UNCACHED * floor.p50_ms,
        ),
        (
            "cached p50 <= 1.5x floor",
            f"{cached.p50_ms / floor.p50_ms:.1f}x",
            cached.p50_ms <= AIM_CACHED * floor.p50_ms,
        ),
        (
            "service RSS, four pairs loaded, < 250 MB",
            f"{service_rss:.0f} MiB",
            service_rss * 2**20 / 1e6 < AIM_RSS_MB,
        ),
        (
            "first prediction < 3 s after spawn (cold: bundles from the registry)",
            f"{out['first_cold_s']:.2f} s",
            out["first_cold_s"] < AIM_FIRST_S,
        ),
        (
            "first prediction < 3 s after spawn (restart: local model copy)",
            f"{out['first_restart_s']:.2f} s",
            out["first_restart_s"] < AIM_FIRST_S,
        ),
    ]
    lines += ["", "| aim | measured | met |", "|---|---:|---|"]
    lines += [f"| {aim} | {value} | {'yes' if ok else 'no'} |" for aim, value, ok in aims]
    lines += [
        "",
        "- p50 of each round (ms): "
        + "; ".join(
            f"{row.label.split(' (')[0]} {' / '.join(f'{v:.2f}' for v in row.round_p50_ms)}"
            for row in rows
        )
        + ".",
        f"- `mlflow models serve` ({mlflow.p50_ms / uncached.p50_ms:.0f}x the uncached "
        f"service's p50): its RSS is the CLI process plus one uvicorn worker of "
        f"{out['mlflow_worker_mib']:,.0f} MiB.",
        f"- Same version everywhere: the service served version {out['served_version']} "
        f"(p = {out['served_p']:.6f}), `mlflow models serve` answered p = {out['mlflow_p']:.6f} "
        f"for the same window, the bundle's ONNX model p = {out['bundle_p']:.6f}.",
        f"- Start-up: {_bytecode()}",
        f"- {ROUNDS} rounds over all five servers (all running throughout); per round and "
        f"server {WARMUP} warm-up requests, then up to {REQUESTS} sequential ones on one "
        f"keep-alive connection (at most {MAX_SECONDS:.0f} s, at least {MIN_REQUESTS}), pooled "
        f"for p50/p99; req/s: {CLIENTS} keep-alive clients for {RPS_SECONDS:.0f} s, median "
        "round. The client (Python http.client) runs on the same cores as the servers.",
    ]
    return "\n".join(lines)


def _bytecode() -> str:
    import fastapi

    if any(Path(fastapi.__file__).parent.glob("__pycache__/*.pyc")):
        return "installed packages have compiled bytecode."
    return (
        "installed packages have no compiled bytecode (PYTHONDONTWRITEBYTECODE="
        f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}), so every start compiles its "
        "imports from source."
    )


def run() -> str:
    """Train, start each server in turn, measure; the markdown report."""
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        out = _bench(Path(tmp))
    return _report(out, (before, os.getloadavg()[0]))


def main(argv: list[str] | None = None) -> int:
    # The options replace the module defaults.
    global TRAIN_ROWS, ROUNDS, REQUESTS, MAX_SECONDS, CLIENTS, RPS_SECONDS
    args = sys.argv[1:] if argv is None else argv
    # The children this bench (and bench.live_loop) runs: not options, and not in --help.
    if args[:1] == ["--train"]:
        print(json.dumps(train_models()))
        return 0
    if args[:1] == ["--floor"]:
        serve_floor(int(args[1]))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.predict_latency",
        description="Prediction latency (p50, p99) and requests per second of this service "
        "(cached, uncached, cold) against `mlflow models serve` of the same registered version "
        "and the HTTP floor (a FastAPI app answering a constant), with the servers' memory and "
        "the service's time to its first prediction.",
    )
    parser.add_argument(
        "--train-rows",
        type=int,
        default=TRAIN_ROWS,
        help="newest candles each tiny model trains on "
        "(BENCH_LATENCY_TRAIN_ROWS; default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help="rounds over all servers (BENCH_LATENCY_ROUNDS; default %(default)s)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=REQUESTS,
        help="sequential requests per round and server, at most "
        "(BENCH_LATENCY_REQUESTS; default %(default)s)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=MAX_SECONDS,
        help=f"seconds after which a slow server's series ends (with at least {MIN_REQUESTS} "
        "requests) (BENCH_LATENCY_MAX_SECONDS; default %(default)s)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=CLIENTS,
        help="concurrent keep-alive connections for requests per second "
        "(BENCH_LATENCY_CLIENTS; default %(default)s)",
    )
    parser.add_argument(
        "--rps-seconds",
        type=float,
        default=RPS_SECONDS,
        help="seconds of each requests-per-second window "
        "(BENCH_LATENCY_RPS_SECONDS; default %(default)s)",
    )
    options = parser.parse_args(args)
    if options.train_rows != TRAIN_ROWS:  # the training child reads it from the environment
        os.environ["BENCH_LATENCY_TRAIN_ROWS"] = str(options.train_rows)
    TRAIN_ROWS, ROUNDS, REQUESTS = options.train_rows, options.rounds, options.requests
    MAX_SECONDS, CLIENTS, RPS_SECONDS = options.max_seconds, options.clients, options.rps_seconds
    print(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
