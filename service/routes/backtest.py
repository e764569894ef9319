"""`GET /api/backtests/latest`: the newest `tbml backtest` run, for the dashboard to link.

A backtest records an MLflow run in the experiment `<ML_EXPERIMENT_NAME>-backtest`
(`mlproject.backtest_report`). This route reads the newest finished one of the tracking store:
what it replayed, its headline figures and the address of the run in the MLflow UI. Nothing is
computed here; MLflow is imported on the first request, and the answer is kept a minute.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from pipelines.tracking import BACKTEST_EXPERIMENT_SUFFIX, KIND_BACKTEST, TAG_KIND
from service.schemas import BacktestSummary, errors

router = APIRouter(prefix="/api", tags=["backtests"])

KEEP_S = 60.0
HEADLINE = (
    "hours",
    "signal_hours",
    "hold_hours",
    "trainings",
    "promotions",
    "return_after_fees",
    "return_after_fees_no_move_gate",
    "buy_hold_return",
    "max_drawdown",
    "sharpe",
    "trades",
    "exposure",
)
_lock = threading.Lock()
_kept: dict[str, tuple[float, dict[str, Any]]] = {}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def latest_backtest(tracking_uri: str, experiment: str, ui_url: str) -> dict[str, Any]:
    """The newest finished backtest run of `experiment`, or `found: false`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    empty: dict[str, Any] = {"found": False, "experiment": experiment}
    if found is None:
        return empty
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = '{KIND_BACKTEST}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return empty
    run = runs[0]
    params, metrics = run.data.params, run.data.metrics
    return {
        "found": True,
        "experiment": experiment,
        "runId": run.info.run_id,
        "name": run.data.tags.get("mlflow.runName", ""),
        "pairs": [p for p in params.get("pairs", "").split(",") if p],
        "modelType": params.get("model_type"),
        "start": params.get("start"),
        "end": params.get("end"),
        "finishedAt": run.info.end_time,
        "metrics": {_camel(k): metrics[k] for k in HEADLINE if k in metrics},
        "url": f"{ui_url.rstrip('/')}/#/experiments/{found.experiment_id}/runs/{run.info.run_id}",
    }


@router.get("/backtests/latest", response_model=BacktestSummary, responses=errors())
async def latest(request: Request) -> dict[str, Any]:
    """The newest finished `tbml backtest`: what it replayed, what the answers would have earned
    after fees against buy-and-hold, and its MLflow run (`found: false` before any)."""
    settings = request.app.state.settings
    experiment = settings.experiment_name + BACKTEST_EXPERIMENT_SUFFIX
    with _lock:
        kept = _kept.get(settings.tracking_uri)
    if kept is not None and time.monotonic() - kept[0] < KEEP_S:
        return kept[1]
    answer = await run_in_threadpool(
        latest_backtest, settings.tracking_uri, experiment, settings.mlflow_ui_url
    )
    with _lock:
        _kept[settings.tracking_uri] = (time.monotonic(), answer)
    return answer
