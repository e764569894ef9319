"""The OpenAPI document is the contract: `schemathesis run --checks all` against a live service
(real uvicorn on loopback, the session's tiny trained models, throwaway stores) finds nothing,
once without a key and once with `ML_API_KEY` set and sent.

The scheduler is off (`make_settings`), so the trainings the fuzzer queues never start.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.service.conftest import LiveServer

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")
KEY = "contract-test-key"
# Enough cases per operation to reach every declared answer, few enough for ~60 s a run.
MAX_EXAMPLES = 20
SEED = 12


def _schemathesis(
    server: LiveServer, workdir: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    # In a temporary folder, with no example database: schemathesis writes `.schemathesis/`
    # caches into its working directory, run output that must not land in the tree.
    return subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(CONFIG),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--no-color",
            "--generation-database",
            "none",
            *extra,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    report = result.stdout[-20_000:] + result.stderr[-5_000:]
    assert result.returncode == 0, report
    assert "Failures:" not in result.stdout, report
    assert " passed" in result.stdout, report


@pytest.mark.slow
def test_schemathesis_finds_nothing_without_a_key(
    serve: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = serve()

    _assert_clean(_schemathesis(server, tmp_path))


@pytest.mark.slow
def test_schemathesis_finds_nothing_with_the_key_set_and_sent(
    serve: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = serve(api_key=KEY)

    _assert_clean(_schemathesis(server, tmp_path, "--header", f"X-API-Key: {KEY}"))
