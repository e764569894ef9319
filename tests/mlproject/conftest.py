"""Real candles for the training tests (the bundled BTC file, loaded once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest

from pipelines.candles.store import CandleStore
from tests.conftest import BUNDLED, free_port

MLFLOW = Path(sys.executable).parent / "mlflow"


@pytest.fixture(scope="session")
def btc_candles() -> pd.DataFrame:
    return CandleStore(bundled_dir=BUNDLED, data_dir=BUNDLED.parent / "none").load("BTC")


@contextmanager
def mlflow_models_serve(uri: str, *, env: dict[str, str], cwd: Path) -> Iterator[str]:
    """`mlflow models serve -m uri --env-manager local` on a free loopback port: its URL once
    `/ping` answers; the process group is ended afterwards (its log is in `cwd`)."""
    port = free_port()
    log_path = cwd / f"serve-{port}.log"
    log = log_path.open("wb")
    argv = [str(MLFLOW), "models", "serve", "-m", uri, "--env-manager", "local"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    process = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/ping", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError(log_path.read_text()[-3000:])
            time.sleep(0.2)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        log.close()
