"""`GET /api/backtests/latest`: the newest finished backtest run of the tracking store.

The run here is written with MLflow's client as `tbml backtest` writes it (the experiment,
the `tbml.kind` tag, the parameters and metrics it logs); tests/mlproject/test_backtest.py
reads a real backtest's run through the same function.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mlflow import MlflowClient

from service.routes import backtest as route
from tests.service.conftest import LiveServer, make_settings


def _record(tracking_uri: str, *, name: str, status: str, returned: float) -> str:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("trading-bot-ml-backtest")
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment("trading-bot-ml-backtest")
    )
    run = client.create_run(experiment_id, run_name=name, tags={"tbml.kind": "backtest"})
    run_id = run.info.run_id
    for key, value in {
        "pairs": "BTC,ETH",
        "model_type": "lightgbm",
        "start": "2023-01-01T00:00:00+00:00",
        "end": "2023-12-30T00:00:00+00:00",
    }.items():
        client.log_param(run_id, key, value)
    client.log_metric(run_id, "return_after_fees", returned)
    client.log_metric(run_id, "buy_hold_return", 1.5)
    client.log_metric(run_id, "signal_hours", 120.0)
    client.set_terminated(run_id, status)
    time.sleep(0.01)  # the newest is the one started last (start times in ms)
    return str(run_id)


def test_no_backtest_then_the_newest_finished_one_with_its_figures_and_link(
    tmp_path: Path, serve: Callable[..., LiveServer]
) -> None:
    settings = make_settings(tmp_path, None, mlflow_ui_url="http://ui.example:5000")
    server = serve(settings)
    route._kept.clear()

    assert server.client.get("/api/backtests/latest").json()["found"] is False

    _record(settings.tracking_uri, name="older", status="FINISHED", returned=0.1)
    newest = _record(settings.tracking_uri, name="newer", status="FINISHED", returned=-0.05)
    _record(settings.tracking_uri, name="failed", status="FAILED", returned=9.0)
    route._kept.clear()  # the answer is kept a minute
    answer = server.client.get("/api/backtests/latest").json()

    assert answer["found"] is True
    assert answer["runId"] == newest
    assert answer["name"] == "newer"
    assert answer["pairs"] == ["BTC", "ETH"]
    assert answer["metrics"] == {
        "returnAfterFees": -0.05,
        "buyHoldReturn": 1.5,
        "signalHours": 120.0,
    }
    assert answer["url"].startswith("http://ui.example:5000/#/experiments/")
    assert answer["url"].endswith(f"/runs/{newest}")
