"""`tbml backtest`: the lifecycle replayed with real trainings, recorded in MLflow, reported.

One short replay (BTC, lightgbm, a week and a half of November 2023, small gate and challenger
sizes so that versions are trained, admitted and decided within it) runs once per module
through `tbml backtest` in a child process, as a user runs it; the tests read its MLflow run,
its report and its decisions, and check each decision against the lifecycle's own functions on
the rows the replay recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlproject.backtest import Replay, replay
from mlproject.backtest_report import pair_figures, trading
from mlproject.config import TrainConfig
from mlproject.loading import load_candles
from pipelines.lifecycle.signal import BUY, HOLD, SELL, SMALL_MOVE, Signal, SignalRules
from tests.conftest import BUNDLED, stores_under

TBML = Path(sys.executable).parent / "tbml"
START, END = "2023-11-01", "2023-11-10"
SMALL = {
    "ML_PAIRS": "BTC",
    "ML_ENABLED_MODELS": "lightgbm",
    "ML_MAX_ROWS": "3000",
    "ML_VERDICT_FOLDS": "2",
    "ML_VERDICT_TEST_ROWS": "300",
    "ML_IMPORTANCE_ROWS": "0",
    "ML_GATE_MIN_ROWS": "24",
    "ML_CHALLENGER_MIN_OUTCOMES": "24",
    "ML_RETRAIN_INTERVAL_HOURS": "24",
    # A version proven on 600 rows is rare: serve every signal, so the move gate is exercised.
    "ML_SERVE_UNPROVEN": "true",
}
METRICS = (
    "signal_hours",
    "hold_hours",
    "promotions",
    "return_after_fees",
    "buy_hold_return",
    "max_drawdown",
    "sharpe",
    "trades",
    "exposure",
    "return_after_fees_no_move_gate",
)


@dataclass(frozen=True)
class Ran:
    root: Path
    out: Path
    env: dict[str, str]
    stdout: str


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "MLFLOW_"))}
    return {
        **env,
        **SMALL,
        "ML_DATA_DIR": str(root / "data"),
        "ML_BUNDLED_DATA_DIR": str(BUNDLED),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "ML_ARTIFACT_ROOT": str(root / "mlruns"),
        "ML_DATABASE_URL": f"sqlite:///{root / 'service.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    root = tmp_path_factory.mktemp("backtest")
    out = root / "report"
    env = _env(root)
    argv = [str(TBML), "backtest", "--pairs", "BTC", "--model-type", "lightgbm"]
    argv += ["--start", START, "--end", END, "--out", str(out)]
    done = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return Ran(root, out, env, done.stdout)


def _settings(root: Path) -> Any:
    values: dict[str, Any] = {k[3:].lower(): v for k, v in SMALL.items() if k != "ML_PAIRS"}
    values["enabled_models"] = ["lightgbm"]
    values["pairs"] = ["BTC"]
    values["retrain_interval_hours"] = {"BTC": 24.0}
    return stores_under(root, **values)


def _run(ran: Ran) -> Any:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ran.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("trading-bot-ml-backtest")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tbml.kind") == "backtest"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], children


def test_the_backtest_leaves_its_mlflow_run_with_metrics_children_plots_and_report(
    ran: Ran,
) -> None:
    client, parent, children = _run(ran)

    assert parent.info.status == "FINISHED"
    for name in METRICS:
        assert name in parent.data.metrics, name
        assert f"BTC_{name}" in parent.data.metrics, name
    metrics = parent.data.metrics
    assert metrics["signal_hours"] + metrics["hold_hours"] == metrics["hours"]
    assert metrics["hours"] == len(pd.date_range(START, END, freq="1h"))
    decisions = json.loads((ran.out / "decisions.json").read_text())["BTC"]
    kinds = Counter(d["kind"] for d in decisions)
    # Every training is a finished child run that trained on the candles known at its hour.
    assert len(children) == kinds["trained"] >= 3
    assert all(child.info.status == "FINISHED" for child in children)
    trained_at = sorted(d["time"] for d in decisions if d["kind"] == "trained")
    ends = sorted(child.data.params["until"] for child in children)
    assert [pd.Timestamp(t) for t in ends] == [pd.Timestamp(t) for t in trained_at]
    for child in children:
        last = pd.Timestamp(child.data.tags["dataset_last_candle"])
        assert last <= pd.Timestamp(child.data.params["until"])
    assert metrics["promotions"] == kinds["promoted"] + kinds["production"] >= 2
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "decisions.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {
        "plots/BTC-equity.png",
        "plots/BTC-answers.png",
        "plots/BTC-live-log-loss.png",
    }
    report = (ran.out / "report.md").read_text()
    assert "## Trading after fees" in report
    assert f"{metrics['buy_hold_return'] * 100:+.1f} %" in report
    assert "return after fees" in ran.stdout


def test_the_service_links_this_backtest_as_the_latest(ran: Ran) -> None:
    from service.routes.backtest import latest_backtest

    _, parent, _ = _run(ran)
    answer = latest_backtest(
        ran.env["MLFLOW_TRACKING_URI"], "trading-bot-ml-backtest", "http://127.0.0.1:5000"
    )

    assert answer["found"] is True
    assert answer["runId"] == parent.info.run_id
    assert answer["pairs"] == ["BTC"]
    assert answer["modelType"] == "lightgbm"
    metrics = parent.data.metrics
    assert answer["metrics"]["returnAfterFees"] == metrics["return_after_fees"]
    assert answer["metrics"]["signalHours"] == metrics["signal_hours"]
    assert answer["url"].endswith(f"/runs/{parent.info.run_id}")


# --- the same replay in-process: every decision against the lifecycle's functions ----------


@pytest.fixture(scope="module")
def replayed(ran: Ran, tmp_path_factory: pytest.TempPathFactory) -> tuple[Replay, pd.DataFrame]:
    """The replay again, in-process, its trainings read back from the first run's child runs
    (the same bundles: nothing is fitted twice)."""
    client, _, children = _run(ran)
    settings = _settings(ran.root)
    by_until = {pd.Timestamp(c.data.params["until"]): c for c in children}
    workdir = tmp_path_factory.mktemp("bundles")

    def from_children(config: TrainConfig, _settings: Any) -> Any:
        from mlflow.artifacts import download_artifacts

        from pipelines.modelbundle import PYFUNC_ARTIFACTS_DIR, ModelBundle, logged_model_id

        child = by_until[pd.Timestamp(str(config.until))]
        models = client.search_logged_models(
            experiment_ids=[child.info.experiment_id],
            filter_string=f"source_run_id = '{child.info.run_id}'",
        )
        model_id = logged_model_id(None, models[0].model_id)
        location = client.get_logged_model(str(model_id)).artifact_location.rstrip("/")
        local = download_artifacts(
            artifact_uri=f"{location}/{PYFUNC_ARTIFACTS_DIR}",
            dst_path=str(workdir / child.info.run_id),
            tracking_uri=settings.tracking_uri,
        )
        return ModelBundle.load(Path(local)), child.info.run_id

    config = TrainConfig.from_settings(settings, pair="BTC", model_type="lightgbm")
    candles = load_candles(config, settings=settings)
    result = replay(
        pair="BTC",
        model_type="lightgbm",
        start=pd.Timestamp(START, tz="UTC"),
        end=pd.Timestamp(END, tz="UTC"),
        settings=settings,
        candles=candles,
        train=from_children,
    )
    return result, candles


def test_the_replay_decides_as_recorded(ran: Ran, replayed: tuple[Replay, pd.DataFrame]) -> None:
    result, _ = replayed
    recorded = json.loads((ran.out / "decisions.json").read_text())["BTC"]

    assert result.decisions() == [(d["time"], d["kind"], d["version"]) for d in recorded]


def test_each_hours_answer_is_the_served_signal_of_what_production_said(
    replayed: tuple[Replay, pd.DataFrame],
) -> None:
    result, _ = replayed
    rules = SignalRules(buy_threshold=0.6, sell_threshold=0.4, move_threshold=0.5)
    seen_gate = 0
    for p, move, signal, ungated in zip(
        result.probability, result.move, result.signals, result.signals_without_gate, strict=True
    ):
        if not np.isfinite(p):
            assert signal.reason == "no_model"
            continue
        raw = BUY if p >= rules.buy_threshold else SELL if p <= rules.sell_threshold else HOLD
        assert signal.raw == raw == ungated.raw
        if SMALL_MOVE in signal.held_by:
            seen_gate += 1
            assert move < rules.move_threshold
            assert SMALL_MOVE not in ungated.held_by
        elif np.isfinite(move) and not signal.held_by:
            assert move >= rules.move_threshold or raw == HOLD
    assert seen_gate > 0, "the magnitude gate never held a signal in the replay"


def _paired(
    new: np.ndarray, old: np.ndarray, outcome: np.ndarray, *, through: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both versions' rows with a known up/down outcome at the close of hour `through`."""
    last = through - 1  # horizon 1: the outcome of hour k is known at the close of k + 1
    a, b, y = new[: last + 1], old[: last + 1], outcome[: last + 1]
    keep = np.isfinite(a) & np.isfinite(b) & np.isin(y, (0.0, 1.0))
    return a[keep], b[keep], y[keep]


def test_each_challenger_is_decided_once_its_rows_suffice_and_by_the_interval(
    replayed: tuple[Replay, pd.DataFrame],
) -> None:
    from pipelines.lifecycle.intervals import paired_interval
    from pipelines.lifecycle.scores import log_losses

    result, _ = replayed
    versions = {v.name: v for v in result.versions}
    decided = [e for e in result.events if e.kind in ("promoted", "retired")]
    assert decided, "no challenger was decided in the replay"
    needed = int(SMALL["ML_CHALLENGER_MIN_OUTCOMES"])
    for event in decided:
        new = versions[str(event.version)]
        at = int(result.hours.searchsorted(event.time))
        old = versions[str(result.serving[at])]  # production when it was decided
        assert new.proba is not None
        assert old.proba is not None
        a, b, y = _paired(new.proba, old.proba, result.outcome, through=at)
        assert len(y) >= needed  # enough rows at the hour it was decided ...
        assert len(_paired(new.proba, old.proba, result.outcome, through=at - 1)[2]) < needed
        # The report's live figures of the version: at least the rows it was decided on.
        assert new.live is not None
        assert new.live.predictions >= len(y)
        verdict = paired_interval(log_losses(a, y) - log_losses(b, y))
        worse = verdict.worse(0.0)
        unproven_against_proven = new.unproven and not old.unproven
        assert (event.kind == "retired") == (worse or unproven_against_proven), event.reason


def test_figures_count_every_hour_once_and_trade_after_fees(
    replayed: tuple[Replay, pd.DataFrame],
) -> None:
    result, candles = replayed
    figures, curves = pair_figures(result, candles, fee=0.001)

    reasons = sum(v for k, v in figures.items() if k.startswith("hold_hours_"))
    assert reasons == figures["hold_hours"]
    assert figures["signal_hours"] + figures["hold_hours"] == len(result.hours)
    # Trading the answers: no fee when nothing is traded, one per change of position.
    flat = trading(
        [Signal("HOLD", "HOLD")] * len(result.hours), result.next_return, fee=0.001, timeframe="1h"
    )
    assert flat.metrics["return_after_fees"] == 0.0
    assert flat.metrics["trades"] == 0.0
    buy_hold = curves["buy and hold"].equity
    moves = result.next_return[np.isfinite(result.next_return)]
    assert buy_hold[-1] == pytest.approx(np.prod(1.0 + moves) * (1 - 0.001))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pairs", "DOGE"], "DOGE"),
        (["--start", "2023-06-01", "--end", "2023-05-01"], "must be before"),
        (["--start", "yesterday-ish"], "--start must be a date such as 2023-01-01"),
        (["--model-type", "xgboost"], "xgboost"),
    ],
)
def test_bad_options_are_refused_with_what_is_allowed(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = subprocess.run(
        [str(TBML), "backtest", *args],
        env=_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "mlflow.db").exists() or "Traceback" not in done.stderr


def test_a_training_as_of_an_hour_reads_no_later_candle(tmp_path: Path) -> None:
    settings = stores_under(tmp_path)
    as_of = TrainConfig(pair="BTC", model_type="lightgbm", until="2023-06-01T05:00:00")

    candles = load_candles(as_of, settings=settings)

    assert as_of.until == "2023-06-01T05:00:00+00:00"
    assert candles.index[-1] == pd.Timestamp("2023-06-01T05:00:00Z")
    everything = load_candles(TrainConfig(pair="BTC", model_type="lightgbm"), settings=settings)
    assert len(everything) > len(candles)
    assert candles["close"].equals(everything["close"].loc[: candles.index[-1]])
    with pytest.raises(ValueError, match="until must be a time such as 2023-06-01T00:00Z"):
        TrainConfig(pair="BTC", until="next tuesday")


def test_overall_adds_the_counts_and_splits_one_portfolio_between_the_pairs() -> None:
    from mlproject.backtest_report import Trading, overall

    def curve(equity: list[float], trades: float, exposure: float) -> Trading:
        return Trading(np.array(equity), {"trades": trades, "exposure": exposure})

    per_pair = {
        pair: {
            "hours": 3.0,
            "signal_hours": signals,
            "hold_hours": 3.0 - signals,
            "hold_hours_band": 3.0 - signals,
            "trainings": 2.0,
            "admitted": 1.0,
            "promotions": 2.0,
            "retirements": 0.0,
            "rejections": 0.0,
            "drift_alarms": 0.0,
            "trades": trades,
            "exposure": exposure,
            "trades_no_move_gate": trades + 1,
            "exposure_no_move_gate": exposure,
        }
        for pair, signals, trades, exposure in (("BTC", 1.0, 2.0, 0.5), ("ETH", 2.0, 4.0, 1.0))
    }
    curves = {
        "BTC": {
            "answers": curve([1.1, 1.2, 1.0], 2, 0.5),
            "answers, move gate off": curve([1.0, 0.9, 0.8], 3, 0.5),
            "buy and hold": curve([1.0, 1.5, 2.0], 1, 1.0),
        },
        "ETH": {
            "answers": curve([0.9, 0.9, 1.0], 4, 1.0),
            "answers, move gate off": curve([1.0, 1.1, 1.2], 5, 1.0),
            "buy and hold": curve([1.0, 0.5, 1.0], 1, 1.0),
        },
    }

    total = overall(per_pair, curves, timeframe="1h")

    assert total["hours"] == 6.0
    assert total["signal_hours"] == 3.0
    assert total["promotions"] == 4.0
    assert total["trades"] == 6.0
    assert total["trades_no_move_gate"] == 8.0
    assert total["exposure"] == 0.75
    # Half the capital in each pair at the start: the mean of the two equity curves.
    assert total["return_after_fees"] == pytest.approx((1.0 + 1.0) / 2 - 1.0)
    assert total["return_after_fees_no_move_gate"] == pytest.approx((0.8 + 1.2) / 2 - 1.0)
    assert total["buy_hold_return"] == pytest.approx((2.0 + 1.0) / 2 - 1.0)
    assert total["max_drawdown"] == pytest.approx(1.0 - 1.0 / 1.05)  # mean 1.0, 1.05, 1.0
    assert total["buy_hold_max_drawdown"] == pytest.approx(0.0)
