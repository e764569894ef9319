"""What reading the registry costs the serving process: MLflow's client against its REST API.

A temporary SQLite tracking store gets one registered model with a `production` alias, and an
`mlflow server` is started on it. Then, for each reader of `service.registry_reader`, a fresh
interpreter imports that module (the baseline: SQLAlchemy, numpy, pandas are there anyway),
creates the reader (`MlflowReader` on the SQLite store, `RestReader` on the server) and makes
its first `production("BTC-lstm")` call; it reports the seconds and the RSS growth of that
first call, which for `MlflowReader` includes `import mlflow`. `BENCH_REGISTRY_REPEAT` fresh
interpreters per reader; the table shows the median. Run alone: `python -m bench.registry_cost`
(`--help` for the options).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPEAT = int(os.environ.get("BENCH_REGISTRY_REPEAT", "3"))
READERS = ("MlflowReader", "RestReader")

_CHILD = """
import json, sys, time
import psutil
import service.registry_reader as registry
process = psutil.Process()
before = process.memory_info().rss
started = time.perf_counter()
reader = getattr(registry, sys.argv[1])(sys.argv[2])
info = reader.production("BTC-lstm")
seconds = time.perf_counter() - started
after = process.memory_info().rss
assert info is not None and info.version == "1", info
print(json.dumps({
    "seconds": seconds,
    "before_mib": before / 2**20,
    "after_mib": after / 2**20,
    "mlflow_imported": "mlflow" in sys.modules,
}))
"""


def _store(root: Path) -> str:
    """A tracking store with `BTC-lstm` version 1 as production."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("BTC-lstm")
    version = client.create_model_version("BTC-lstm", source=(root / "model").as_uri())
    client.set_registered_model_alias("BTC-lstm", "production", version.version)
    return uri


def _measure(reader: str, uri: str) -> dict[str, Any]:
    project = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, reader, uri],
        env={**os.environ, "PYTHONPATH": project},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{reader}: {result.stderr[-2000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _server(uri: str, root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`mlflow server` on the store, on a free loopback port, once it answers."""
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
         "--artifacts-destination", (root / "artifacts").as_uri(),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return process, base
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("mlflow server did not start") from None
            time.sleep(0.5)


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="tbml-bench-registry-") as tmp:
        uri = _store(Path(tmp))
        server, base = _server(uri, Path(tmp))
        try:
            targets = {"MlflowReader": uri, "RestReader": base}
            rows = {
                name: [_measure(name, targets[name]) for _ in range(REPEAT)] for name in READERS
            }
        finally:
            server.terminate()
            server.wait(timeout=30)
    lines = [
        f"### First `production()` call of the serving side's registry readers "
        f"(MlflowReader: SQLite store; RestReader: `mlflow server` on it; "
        f"median of {REPEAT} fresh interpreters)",
        "",
        "| reader | seconds | RSS before MiB | RSS after MiB | growth MiB | imports mlflow |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, samples in rows.items():
        seconds = statistics.median(s["seconds"] for s in samples)
        before = statistics.median(s["before_mib"] for s in samples)
        after = statistics.median(s["after_mib"] for s in samples)
        growth = statistics.median(s["after_mib"] - s["before_mib"] for s in samples)
        imported = "yes" if all(s["mlflow_imported"] for s in samples) else "no"
        lines.append(
            f"| {name} | {seconds:.2f} | {before:.0f} | {after:.0f} | {growth:.0f} | {imported} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    global REPEAT  # the option replaces the module default
    parser = argparse.ArgumentParser(
        prog="python -m bench.registry_cost",
        description="Seconds and memory of the serving side's first registry read in a fresh "
        "interpreter: MLflow's client on the SQLite store (MlflowReader) against the REST API "
        "of `mlflow server` on it (RestReader).",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=REPEAT,
        help="fresh interpreters per reader, median shown "
        "(BENCH_REGISTRY_REPEAT; default %(default)s)",
    )
    args = parser.parse_args(argv)
    REPEAT = args.repeat
    print(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
