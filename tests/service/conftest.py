"""Service fixtures: real tiny models trained once, a real uvicorn on a free loopback port.

`trained` trains BTC lstm, BTC gru and ETH lstm once per session (1 epoch on the newest 400
bundled candles, through `mlproject.train`) into a temporary MLflow SQLite store. Each test that
needs isolation gets its own copy of that store (`make_settings`), so registry changes made by
one test (a new version, a moved alias) are invisible to the others; the artifacts stay where
the training wrote them and are only read.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from pipelines.candles.store import CandleStore
from pipelines.settings import Settings
from service.app import create_app
from service.state import ServiceState
from tests.conftest import BUNDLED, free_port, stores_under

TINY: dict[str, Any] = {
    "epochs": 1,
    "sequence_length": 12,
    "units": 8,
    "layers": 1,
    "max_rows": 400,
}
TRAINED = (("BTC", "lstm"), ("BTC", "gru"), ("ETH", "lstm"))


@dataclass(frozen=True)
class Trained:
    """The session's MLflow store with one production version of each of `TRAINED`."""

    root: Path
    tracking_db: Path
    artifact_root: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from mlproject.config import TrainConfig
    from mlproject.train import train

    root = tmp_path_factory.mktemp("trained")
    settings = stores_under(root)
    for pair, model_type in TRAINED:
        outcome = train(TrainConfig(pair=pair, model_type=model_type, **TINY), settings=settings)
        assert outcome.version == "1", outcome
        assert outcome.promotion == "promoted", outcome
    return Trained(root, root / "mlflow.db", root / "mlruns")


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database, WAL included."""
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def make_settings(tmp_path: Path, trained: Trained | None, **overrides: Any) -> Settings:
    """Settings over `tmp_path`, with a private copy of the trained MLflow store.

    No scheduler and slow background chores unless a test asks: the tests drive them.
    """
    tracking = tmp_path / "mlflow.db"
    if trained is not None and not tracking.exists():
        copy_sqlite(trained.tracking_db, tracking)
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "bundled_data_dir": BUNDLED,
        "tracking_uri": f"sqlite:///{tracking}",
        "artifact_root": trained.artifact_root if trained else tmp_path / "mlruns",
        "database_url": f"sqlite:///{tmp_path / 'service.db'}",
        "run_scheduler": False,
        "model_refresh_interval_ms": 600_000,
        "outcome_fill_interval_ms": 600_000,
        "training_cooldown_ms": 0,
        # No live feed (no network here), and the bundled candles (2023) count as fresh
        # unless a test asks about staleness.
        "feed_enabled": False,
        "stale_after": 10_000_000,
        # The tests train the LSTM; the served default (blend first) is tested where it counts.
        "enabled_models": ["lstm"],
        **overrides,
    }
    return Settings(_env_file=None, **values)


@dataclass
class LiveServer:
    """A running app: its URL, its state, and a client bound to it."""

    url: str
    app: Any
    client: httpx.Client

    @property
    def state(self) -> ServiceState:
        state: ServiceState = self.app.state.service
        return state

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextmanager
def live_server(settings: Settings) -> Iterator[LiveServer]:
    """`create_app(settings)` under a real uvicorn on a free 127.0.0.1 port, in a thread."""
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start: {failure or 'see the log'}")
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield LiveServer(url, app, client)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@pytest.fixture
def serve(tmp_path: Path, trained: Trained) -> Iterator[Callable[..., LiveServer]]:
    """Start live servers on settings over this test's `tmp_path`; stop them after the test."""
    stack: list[Any] = []

    def start(settings: Settings | None = None, **overrides: Any) -> LiveServer:
        context = live_server(settings or make_settings(tmp_path, trained, **overrides))
        server = context.__enter__()
        stack.append(context)
        return server

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


# --- the registry --------------------------------------------------------------------------


def registry(settings: Settings) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def set_production(settings: Settings, name: str, version: str) -> None:
    """Move the `production` alias, as the promotion gate does."""
    registry(settings).set_registered_model_alias(name, "production", version)


def register_variant(
    settings: Settings,
    tmp_path: Path,
    *,
    name: str = "BTC-lstm",
    from_version: str = "1",
    edit: Callable[[Path], None] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """A new version of `name` whose bundle is `from_version`'s, changed by `edit(bundle_dir)`.

    `from_version`'s logged pyfunc model is copied whole (MLmodel, code, artifacts) into a new
    logged model of a new run, its `artifacts/` folder edited, and that model registered, as a
    training registers its model; returns the new version number.
    """
    import mlflow
    from mlflow.artifacts import download_artifacts
    from mlflow.entities import LoggedModelStatus

    from pipelines.modelbundle import PYFUNC_ARTIFACTS_DIR, logged_model_id

    client = registry(settings)
    work = tmp_path / f"variant-{time.monotonic_ns()}"
    work.mkdir()
    source_id = logged_model_id(client.get_model_version(name, from_version).source)
    assert source_id is not None
    location = client.get_logged_model(source_id).artifact_location
    directory = Path(download_artifacts(artifact_uri=location, dst_path=str(work)))
    if edit is not None:
        edit(directory / PYFUNC_ARTIFACTS_DIR)
    experiment = client.get_experiment_by_name("trading-bot-ml")
    run = client.create_run(experiment.experiment_id, run_name=f"{name}-variant")
    model = client.create_logged_model(
        experiment.experiment_id, name="model", source_run_id=run.info.run_id
    )
    client.log_model_artifacts(model.model_id, str(directory))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.set_terminated(run.info.run_id)
    # MLflow resolves a `models:/m-...` source through the process's tracking URI.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(settings.tracking_uri)
    try:
        version = client.create_model_version(
            name,
            source=f"models:/{model.model_id}",
            run_id=run.info.run_id,
            tags=tags or {},
        )
    finally:
        mlflow.set_tracking_uri(previous)
    return str(version.version)


def edit_json(path: Path, **changes: Any) -> None:
    import json

    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# --- candles -------------------------------------------------------------------------------


def append_candle(settings: Settings, pair: str, *, close_factor: float = 1.01) -> int:
    """Append one candle after the newest one to the pair's ingested file (as `tbml ingest`
    lays it out); returns its open time in epoch ms."""
    import pandas as pd

    store = CandleStore.from_settings(settings)
    frame = store.load(pair, settings.timeframe)
    last = frame.iloc[-1]
    stamp = frame.index[-1] + pd.Timedelta(hours=1)
    open_ = float(last["close"])
    close = open_ * close_factor
    row = (
        f"{stamp.strftime('%Y-%m-%dT%H:%M:%SZ')},{open_},{max(open_, close) * 1.001},"
        f"{min(open_, close) * 0.999},{close},12.5\n"
    )
    path = store.ingested_path(pair, settings.timeframe)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else "timestamp,open,high,low,close,volume\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(old + row)
    os.replace(tmp, path)
    return int(stamp.value // 1_000_000)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Iterator[LiveServer]:
    """One server per module (lstm and gru served) for tests that only read."""
    root = tmp_path_factory.mktemp("shared")
    with live_server(make_settings(root, trained, enabled_models=["lstm", "gru"])) as server:
        yield server


def bundled_candles(pair: str) -> Any:
    """The pair's bundled candles, as the service's store reads them."""
    return CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED / "none").load(pair)


# Started by `tbml serve` in a thread of a fresh interpreter: the newest BTC prediction and the
# heavy modules it saw, as one JSON line; then it exits. Standard library only, so that it runs
# in an environment of the service's lock alone.
_SERVE_CHILD = """
import json, os, sys, threading, time, urllib.request
from tbml.cli import app

port = sys.argv[1]
args = ["serve", "--port", port, "--no-scheduler", "--log-level", "warning"]
threading.Thread(target=lambda: app(args, standalone_mode=False), daemon=True).start()
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 120
while True:
    try:
        with urllib.request.urlopen(base + "/api/health", timeout=5):
            break
    except OSError:
        if time.monotonic() > deadline:
            raise
    time.sleep(0.1)
with urllib.request.urlopen(base + "/api/predictions/BTC", timeout=30) as response:
    answer = json.loads(response.read())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "keras", "tf2onnx"})
print(json.dumps({"answer": answer, "heavy": heavy}), flush=True)
os._exit(0)
"""


def serve_in_child(settings: Settings, *, python: str) -> subprocess.CompletedProcess[str]:
    """`tbml serve` on `settings`' stores in a fresh `python`, environment from settings only."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ML_", "MLFLOW_", "TRADING_"))
    }
    env.update(
        {
            "ML_DATA_DIR": str(settings.data_dir),
            "ML_BUNDLED_DATA_DIR": str(settings.bundled_data_dir),
            "MLFLOW_TRACKING_URI": settings.tracking_uri,
            "ML_ARTIFACT_ROOT": str(settings.artifact_root),
            "ML_DATABASE_URL": settings.database_url,
            "ML_ENABLED_MODELS": ",".join(settings.enabled_models),
        }
    )
    return subprocess.run(
        [python, "-c", _SERVE_CHILD, str(free_port())],
        cwd=settings.data_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
