"""Prediction throughput with one and with two API replicas under the same client load.

Self-contained: a tiny real model (BTC lstm, 1 epoch on the newest 400 candles, trained and
promoted by `mlflow run -e train`) in a temporary MLflow store; the service database on
PostgreSQL when a server answers at ML_BENCH_POSTGRES_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/test; a database created and dropped here), else a
SQLite file the replicas share. Two `tbml serve --no-scheduler` replicas run on loopback ports,
each with its own data directory (its own model cache), as in deploy/docker-compose.yml.

The client is the same for both sides: `BENCH_REPLICAS_CLIENTS` (16) keep-alive HTTP/1.1
connections driven by one asyncio loop in this process, each sending `GET
/api/predictions/BTC` back to back. With one replica all of them go to it; with two, connection
i goes to replica i mod 2 (client-side round-robin: no proxy is installed here; nginx in
deploy/ does the same). After a warm-up, requests completed in `BENCH_REPLICAS_SECONDS` (8 s)
count; the rounds alternate which side goes first and the median is reported.

- cached: the replicas' defaults; every request after the first is a prediction-cache hit.
- uncached: ML_PREDICTION_CACHE_TTL=0, so every request runs the ONNX model on the newest
  window and queues a prediction-history row (written to the service database).

CPU time of the replicas and of this process (the client) during the measured window is shown
in cores, to say what the ratio is limited by. Run alone with `python -m bench.replicas` (`--help`
for the options).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from pipelines.settings import PROJECT_ROOT

CLIENTS = int(os.environ.get("BENCH_REPLICAS_CLIENTS", "16"))
SECONDS = float(os.environ.get("BENCH_REPLICAS_SECONDS", "8"))
WARMUP_S = 1.5
ROUNDS = int(os.environ.get("BENCH_REPLICAS_ROUNDS", "2"))
POSTGRES_URL = os.environ.get(
    "ML_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BIN = Path(sys.executable).parent
PATH = "/api/predictions/BTC"
REQUEST = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
TRAINING = {
    "pair": "BTC",
    "epochs": "1",
    "max_rows": "400",
    "sequence_length": "12",
    "units": "8",
    "layers": "1",
}


@dataclass(frozen=True)
class Round:
    """One measured window."""

    rps: float
    server_cores: float
    client_cores: float


# --- stores and processes ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _service_database(root: Path) -> Iterator[tuple[str, str]]:
    """(URL, description) of the service database: PostgreSQL if one answers, else SQLite."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin = sa.create_engine(
        POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    name = f"tbml_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError:
        admin.dispose()
        yield f"sqlite:///{root / 'service.db'}", "SQLite (no PostgreSQL server answered)"
        return
    try:
        url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        yield url, "PostgreSQL"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _environment(root: Path, database_url: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ML_", "MLFLOW_")) and key not in {"HOST", "PORT"}
    }
    env.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "ML_ARTIFACT_ROOT": str(root / "mlruns"),
            "ML_DATABASE_URL": database_url,
            "ML_PAIRS": "BTC",
            # Nothing changes in the registry during the bench: poll it rarely.
            "ML_MODEL_REFRESH_INTERVAL": "600000",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    return env


def _train(root: Path, env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "train"]
    for name, value in TRAINING.items():
        command += ["-P", f"{name}={value}"]
    command += ["--env-manager", "local", "--experiment-name", "bench-replicas"]
    result = subprocess.run(
        command,
        cwd=root,
        env={**env, "ML_DATA_DIR": str(root / "trainer")},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"training the bench model failed:\n{result.stderr[-3000:]}")


def _get(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _serving(port: int) -> bool:
    """Whether the replica answers a real (non-fallback) prediction now."""
    with contextlib.suppress(OSError):
        status, body = _get(port, PATH)
        return status == 200 and not json.loads(body).get("fallback", True)
    return False


@contextlib.contextmanager
def _replicas(root: Path, env: dict[str, str], *, label: str) -> Iterator[list[tuple[int, int]]]:
    """Two `tbml serve --no-scheduler` replicas; yields [(port, pid)] once both serve."""
    started: list[tuple[int, subprocess.Popen[bytes]]] = []
    try:
        for index in range(2):
            port = _free_port()
            log = (root / f"{label}-api-{index}.log").open("ab")
            process = subprocess.Popen(
                [str(BIN / "tbml"), "serve", "--no-scheduler", "--port", str(port)],
                cwd=root,
                env={**env, "ML_DATA_DIR": str(root / f"{label}-api-{index}")},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            started.append((port, process))
        deadline = time.monotonic() + 240
        for port, process in started:
            while not _serving(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"replica on {port} did not start; see {root}")
                time.sleep(0.5)
        yield [(port, process.pid) for port, process in started]
    finally:
        for _, process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# --- the client ---------------------------------------------------------------------------------


async def _connection(port: int, window: tuple[float, float], done: list[int]) -> None:
    """Send requests back to back on one keep-alive connection; count those in `window`."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start, stop = window
    count = 0
    try:
        while (now := loop.time()) < stop:
            writer.write(REQUEST)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if not status.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"replica on {port} answered {status!r}")
            if now >= start:
                count += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    done.append(count)


async def _drive(ports: list[int]) -> int:
    loop = asyncio.get_running_loop()
    start = loop.time() + WARMUP_S
    window = (start, start + SECONDS)
    done: list[int] = []
    await asyncio.gather(
        *(_connection(ports[i % len(ports)], window, done) for i in range(CLIENTS))
    )
    return sum(done)


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def _measure(replicas: list[tuple[int, int]]) -> Round:
    pids = [pid for _, pid in replicas]
    server_before, client_before = _cpu_seconds(pids), time.process_time()
    started = time.perf_counter()
    requests = asyncio.run(_drive([port for port, _ in replicas]))
    elapsed = time.perf_counter() - started
    server = _cpu_seconds(pids) - server_before
    client = time.process_time() - client_before
    # CPU is counted over warm-up and window alike; the rate only over the window.
    return Round(requests / SECONDS, server / elapsed, client / elapsed)


def _workload(replicas: list[tuple[int, int]]) -> dict[int, Round]:
    """Median round of one and of two replicas, alternating which goes first."""
    rounds: dict[int, list[Round]] = {1: [], 2: []}
    for number in range(ROUNDS):
        for count in (1, 2) if number % 2 == 0 else (2, 1):
            rounds[count].append(_measure(replicas[:count]))
    return {
        count: Round(
            rps=statistics.median(r.rps for r in measured),
            server_cores=statistics.median(r.server_cores for r in measured),
            client_cores=statistics.median(r.client_cores for r in measured),
        )
        for count, measured in rounds.items()
    }


# --- the report ---------------------------------------------------------------------------------


def run() -> str:
    """Train the tiny model, measure both workloads, return the markdown table."""
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        root = Path(tmp)
        with _service_database(root) as (database_url, database):
            env = _environment(root, database_url)
            _train(root, env)
            results: dict[str, dict[int, Round]] = {}
            for label, extra in (("cached", {}), ("uncached", {"ML_PREDICTION_CACHE_TTL": "0"})):
                with _replicas(root, {**env, **extra}, label=label) as replicas:
                    results[label] = _workload(replicas)
    lines = [
        "## One vs two API replicas (`tbml serve --no-scheduler`), same client load",
        "",
        f"{os.cpu_count()} CPU cores shared by the client and the replicas; {CLIENTS} keep-alive "
        f"connections from one asyncio client, round-robin over the replicas; {SECONDS:g} s "
        f"windows, median of {ROUNDS}; service database: {database}.",
        "",
        "| workload | replicas | requests/s | vs one replica | replica CPU (cores) "
        "| client CPU (cores) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, by_count in results.items():
        one = by_count[1].rps
        for count, measured in sorted(by_count.items()):
            lines.append(
                f"| {label} | {count} | {measured.rps:,.0f} | {measured.rps / one:.2f}x "
                f"| {measured.server_cores:.2f} | {measured.client_cores:.2f} |"
            )
    busy = ", ".join(
        f"{label} {by_count[2].server_cores + by_count[2].client_cores:.2f}"
        for label, by_count in results.items()
    )
    lines += [
        "",
        "What limits the ratio: a replica is one Python process (one event loop, one GIL), so "
        "one replica tops out near one core; a second replica can only add the cores left "
        f"over. With two replicas, replicas and client together kept {busy} of the "
        f"{os.cpu_count()} cores busy: the machine, not the service, is the ceiling. The "
        "cheaper the request (cached), the larger the client's share of the same cores and the "
        "smaller the gain; on machines of their own the replicas scale with the cores added.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    global CLIENTS, SECONDS, ROUNDS, POSTGRES_URL  # the options replace the module defaults
    parser = argparse.ArgumentParser(
        prog="python -m bench.replicas",
        description="Prediction throughput (requests/s) of two `tbml serve` replicas against one, "
        "under the same client load, cached and uncached, with the CPU the replicas and the "
        "client used.",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=CLIENTS,
        help="keep-alive connections of the client (BENCH_REPLICAS_CLIENTS; default %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=SECONDS,
        help="measured window of each round (BENCH_REPLICAS_SECONDS; default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        help="rounds of each side, median shown (BENCH_REPLICAS_ROUNDS; default %(default)s)",
    )
    parser.add_argument(
        "--postgres-url",
        default=POSTGRES_URL,
        help="PostgreSQL server for the service database, else SQLite (default: "
        "ML_BENCH_POSTGRES_URL, else postgresql+psycopg://postgres@127.0.0.1:5432/test)",
    )
    args = parser.parse_args(argv)
    CLIENTS, SECONDS, ROUNDS = args.clients, args.seconds, args.rounds
    POSTGRES_URL = args.postgres_url
    print(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
