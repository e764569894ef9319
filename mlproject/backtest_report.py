"""What a backtest's replays add up to: figures per pair and overall, plots, a markdown report,
and the MLflow parent run that holds them (each training is its child run).

Figures of one pair (`pair_figures`), all named as the run's metrics (`<PAIR>_<name>`, and the
overall ones without a prefix):

- `hours`, `signal_hours` (BUY or SELL answered), `hold_hours` and `hold_hours_<reason>` (the
  first reason held, `pipelines.lifecycle.signal`: no_model, stale_model, unproven, small_move,
  band);
- `trainings`, `admitted` (gate: challenger), `promotions` (challenger policy, plus a gate that
  made production directly), `retirements`, `rejections`, `drift_alarms`;
- trading after fees (`mlproject.trading`: spot, BUY enters, SELL exits, HOLD keeps; `ML_FEE`
  a side): `return_after_fees`, `buy_hold_return`, `max_drawdown`, `sharpe`, `trades`,
  `exposure` (share of hours held long); and the same with the move gate off
  (`*_no_move_gate`);
- the live figures of the served answers (`pipelines.lifecycle.live.score`, the scorer the
  service runs): `live_rows`, `live_log_loss` and each naive baseline's, with the paired
  interval against the best of them.

Overall: hours and counts summed over pairs; trading as one portfolio split equally between
the pairs at the start (each pair's equity curve, averaged).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlproject.backtest import Replay
from mlproject.trading import backtest as trade
from mlproject.trading import periods_per_year, positions_from_signals
from pipelines.lifecycle import live
from pipelines.lifecycle.baselines import NAIVE_BASELINES, naive_probabilities
from pipelines.lifecycle.signal import BUY, HOLD_REASONS, SELL, Signal

SIGNAL_CODES = {BUY: 1, SELL: -1}


@dataclass(frozen=True)
class Trading:
    """One way of trading the answers over the replayed hours."""

    equity: np.ndarray  # after each hour (the last hour has no next candle: left out)
    metrics: dict[str, float]


def trading(signals: list[Signal], returns: np.ndarray, *, fee: float, timeframe: str) -> Trading:
    """Spot trading of `signals` (`mlproject.trading`), with its exposure."""
    known = np.isfinite(returns)
    codes = np.array([SIGNAL_CODES.get(s.signal, 0) for s in signals], dtype=np.int8)[known]
    return _held(positions_from_signals(codes), returns[known], fee=fee, timeframe=timeframe)


def buy_and_hold(returns: np.ndarray, *, fee: float, timeframe: str) -> Trading:
    """Long from the first hour to the last: one entry fee."""
    known = returns[np.isfinite(returns)]
    return _held(np.ones_like(known), known, fee=fee, timeframe=timeframe)


def _held(positions: np.ndarray, returns: np.ndarray, *, fee: float, timeframe: str) -> Trading:
    result = trade(
        positions=positions, returns=returns, fee=fee, periods_per_year=periods_per_year(timeframe)
    )
    m = result.metrics
    return Trading(
        equity=result.equity,
        metrics={
            "return_after_fees": m["cumulative_return"],
            "max_drawdown": m["max_drawdown"],
            "sharpe": m["sharpe"],
            "trades": m["n_trades"],
            "exposure": float(positions.mean()) if positions.size else 0.0,
        },
    )


def served_live(replay: Replay, candles: pd.DataFrame) -> live.LiveFigures | None:
    """The live scorer's figures of every answered hour (production's probability) against the
    naive baselines, as the service scores its versions."""
    keep = np.isfinite(replay.probability) & np.isin(replay.outcome, (0.0, 1.0))
    if not keep.any():
        return None
    p = replay.probability[keep]
    y = replay.outcome[keep].astype(np.int8)
    rows = live.RealisedRows(
        model_type=replay.model_type,
        model_version="served",
        candle_time=replay.hours.as_unit("ms").asi8[keep],
        probability=p,
        outcome=y,
        correct=(p >= 0.5) == (y == 1),
        horizon=np.full(int(keep.sum()), int(replay.settings_used["horizon"])),
    )
    return live.score(rows, candles)


def pair_figures(
    replay: Replay, candles: pd.DataFrame, *, fee: float
) -> tuple[dict[str, float], dict[str, Trading]]:
    """The figures of one pair (module docstring) and its equity curves by name."""
    timeframe = str(replay.settings_used["timeframe"])
    reasons = Counter(s.reason for s in replay.signals)
    figures: dict[str, float] = {
        "hours": float(len(replay.hours)),
        "signal_hours": float(sum(1 for s in replay.signals if s.signal in (BUY, SELL))),
        "hold_hours": float(sum(1 for s in replay.signals if s.signal not in (BUY, SELL))),
        **{f"hold_hours_{r}": float(reasons.get(r, 0)) for r in HOLD_REASONS},
    }
    kinds = Counter(e.kind for e in replay.events)
    figures |= {
        "trainings": float(kinds["trained"]),
        "admitted": float(kinds["admitted"]),
        "promotions": float(kinds["promoted"] + kinds["production"]),
        "retirements": float(kinds["retired"]),
        "rejections": float(kinds["rejected"]),
        "drift_alarms": float(kinds["drift"]),
    }
    curves = {
        "answers": trading(replay.signals, replay.next_return, fee=fee, timeframe=timeframe),
        "answers, move gate off": trading(
            replay.signals_without_gate, replay.next_return, fee=fee, timeframe=timeframe
        ),
        "buy and hold": buy_and_hold(replay.next_return, fee=fee, timeframe=timeframe),
    }
    figures |= curves["answers"].metrics
    figures |= {f"{k}_no_move_gate": v for k, v in curves["answers, move gate off"].metrics.items()}
    figures["buy_hold_return"] = curves["buy and hold"].metrics["return_after_fees"]
    figures["buy_hold_max_drawdown"] = curves["buy and hold"].metrics["max_drawdown"]
    figures["buy_hold_sharpe"] = curves["buy and hold"].metrics["sharpe"]
    scored = served_live(replay, candles)
    if scored is not None:
        figures["live_rows"] = float(scored.predictions)
        figures["live_log_loss"] = scored.log_loss.value
        for name in NAIVE_BASELINES:
            figures[f"live_{name}_log_loss"] = scored.baselines[name].log_loss
        versus = scored.versus_baseline
        figures["live_vs_best_baseline_mean"] = versus.mean
        figures["live_vs_best_baseline_low"] = versus.low
        figures["live_vs_best_baseline_high"] = versus.high
    return figures, curves


def overall(
    per_pair: dict[str, dict[str, float]], curves: dict[str, dict[str, Trading]], *, timeframe: str
) -> dict[str, float]:
    """Counts summed over pairs; trading as one portfolio split equally between the pairs at
    the start (each pair's equity curve, averaged): its return, drawdown and Sharpe ratio, the
    trades of all pairs and their mean exposure."""
    first = next(iter(per_pair.values()))
    counted = [k for k in first if k.startswith(("hours", "hold_", "signal"))]
    counted += ["trainings", "admitted", "promotions", "retirements", "rejections", "drift_alarms"]
    total = {k: float(sum(f.get(k, 0.0) for f in per_pair.values())) for k in counted}
    for suffix in ("", "_no_move_gate"):
        total[f"trades{suffix}"] = float(sum(f[f"trades{suffix}"] for f in per_pair.values()))
        total[f"exposure{suffix}"] = float(
            np.mean([f[f"exposure{suffix}"] for f in per_pair.values()])
        )
    for name, prefix, suffix in (
        ("answers", "", ""),
        ("answers, move gate off", "", "_no_move_gate"),
        ("buy and hold", "buy_hold_", ""),
    ):
        equities = [c[name].equity for c in curves.values()]
        size = min(e.size for e in equities)
        if not size:
            continue
        mean = np.mean([e[:size] for e in equities], axis=0)
        returns = np.diff(np.concatenate(([1.0], mean))) / np.concatenate(([1.0], mean[:-1]))
        key = "buy_hold_return" if prefix else f"return_after_fees{suffix}"
        total[key] = float(mean[-1] - 1.0)
        peaks = np.maximum.accumulate(np.concatenate(([1.0], mean)))[1:]
        total[f"{prefix}max_drawdown{suffix}"] = float(np.max(1.0 - mean / peaks))
        sd = float(np.std(returns, ddof=1)) if returns.size > 1 else 0.0
        total[f"{prefix}sharpe{suffix}"] = (
            0.0
            if sd == 0.0
            else float(returns.mean() / sd * math.sqrt(periods_per_year(timeframe)))
        )
    return total


# --- plots -------------------------------------------------------------------------------


def plot_equity(replay: Replay, curves: dict[str, Trading], path: Path) -> Path:
    """Equity after fees of the answers (with and without the move gate) and of buy-and-hold,
    promotions marked."""
    from matplotlib.dates import date2num

    from mlproject.plots import _figure, _save

    fig = _figure(9.0, 4.5)
    ax = fig.subplots()
    index = replay.hours[np.isfinite(replay.next_return)]
    for name, curve in curves.items():
        ax.plot(index[: curve.equity.size], curve.equity, label=name, linewidth=1.0)
    for event in replay.events:
        if event.kind in ("promoted", "production"):
            ax.axvline(
                float(date2num(event.time.to_pydatetime())),
                color="green",
                alpha=0.25,
                linewidth=0.8,
            )
    ax.set_title(f"{replay.pair} {replay.model_type}: equity after fees (green: promotions)")
    ax.set_ylabel("equity (start = 1)")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_timeline(replay: Replay, path: Path) -> Path:
    """Each hour's answer: BUY, SELL, or HOLD by its reason."""
    from mlproject.plots import _figure, _save

    fig = _figure(9.0, 3.5)
    ax = fig.subplots()
    rows = [BUY, SELL, *HOLD_REASONS]
    colours = {BUY: "green", SELL: "red"}
    for y, label in enumerate(rows):
        at = [
            t.tz_localize(None).to_datetime64()
            for t, s in zip(replay.hours, replay.signals, strict=True)
            if (s.signal if s.signal in (BUY, SELL) else s.reason) == label
        ]
        if at:
            ax.scatter(
                np.array(at), [y] * len(at), s=2, marker="|", color=colours.get(label, "grey")
            )
    ax.set_yticks(range(len(rows)), [r if r in (BUY, SELL) else f"HOLD: {r}" for r in rows])
    ax.set_title(f"{replay.pair} {replay.model_type}: the answer each hour")
    return _save(fig, path)


def plot_live(replay: Replay, candles: pd.DataFrame, path: Path, *, window: int = 168) -> Path:
    """Rolling mean log loss of the served answers against the naive baselines, on the same
    realised candles."""
    from mlproject.plots import _figure, _save
    from pipelines.lifecycle.scores import log_losses

    fig = _figure(9.0, 4.0)
    ax = fig.subplots()
    keep = np.isfinite(replay.probability) & np.isin(replay.outcome, (0.0, 1.0))
    if keep.any():
        times = replay.hours[keep]
        y = replay.outcome[keep].astype(np.int8)
        series = {"served": log_losses(replay.probability[keep], y)}
        naive = naive_probabilities(
            candles, times.as_unit("ms").asi8, horizon=int(replay.settings_used["horizon"])
        )
        for name, p in naive.items():
            series[name] = log_losses(p, y)
        for name, losses in series.items():
            rolled = pd.Series(losses, index=times).rolling(window, min_periods=window // 2).mean()
            ax.plot(rolled.index, rolled.to_numpy(), label=name, linewidth=1.0)
    ax.set_title(f"{replay.pair}: live log loss, rolling {window} candles (lower is better)")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


# --- the markdown report -----------------------------------------------------------------


def _pct(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value * 100:+.1f} %"


def _num(value: float, digits: int = 2) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(
    *,
    title: str,
    command: str,
    replays: list[Replay],
    per_pair: dict[str, dict[str, float]],
    total: dict[str, float],
    seconds: float,
    run_id: str | None,
) -> str:
    """The report: what the service would have done and earned, per pair and overall."""
    first = replays[0]
    used = first.settings_used
    lines = [
        f"# {title}",
        "",
        f"Produced by `{command}` in {seconds / 60:.1f} min"
        + (f"; MLflow run `{run_id}` (its child runs are the trainings)." if run_id else "."),
        "",
        "The lifecycle replayed hour by hour with the service's own decision functions "
        "(`mlproject/backtest.py`): the retraining trigger, real trainings on the candles known at "
        "the hour, the offline gate, shadow scoring and the challenger policy, drift, staleness, "
        "and the answer each hour. Trading is a spot bot's (BUY enters long, SELL exits, HOLD "
        f"keeps the position) with a fee of {used['trading_fee'] * 100:g} % a side.",
        "",
        "## Trading after fees",
        "",
        "| pair | answers | max drawdown | Sharpe | trades | exposure | move gate off | "
        "buy and hold | its drawdown |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pair, f in per_pair.items():
        lines.append(
            f"| {pair} | {_pct(f['return_after_fees'])} | {_pct(-f['max_drawdown'])} | "
            f"{_num(f['sharpe'])} | {f['trades']:.0f} | {f['exposure'] * 100:.0f} % | "
            f"{_pct(f['return_after_fees_no_move_gate'])} "
            f"({f['trades_no_move_gate']:.0f} trades) | {_pct(f['buy_hold_return'])} | "
            f"{_pct(-f['buy_hold_max_drawdown'])} |"
        )
    if len(per_pair) > 1:
        lines.append(
            f"| all (equal split) | {_pct(total['return_after_fees'])} | "
            f"{_pct(-total.get('max_drawdown', math.nan))} | | | | "
            f"{_pct(total['return_after_fees_no_move_gate'])} | {_pct(total['buy_hold_return'])} "
            f"| {_pct(-total.get('buy_hold_max_drawdown', math.nan))} |"
        )
    lines += [
        "",
        "## The answers",
        "",
        "| pair | hours | BUY or SELL | HOLD | "
        + " | ".join(f"HOLD: {r}" for r in HOLD_REASONS)
        + " |",
        "|---|---|---|---|" + "---|" * len(HOLD_REASONS),
    ]
    for pair, f in per_pair.items():
        lines.append(
            f"| {pair} | {f['hours']:.0f} | {f['signal_hours']:.0f} | {f['hold_hours']:.0f} | "
            + " | ".join(f"{f[f'hold_hours_{r}']:.0f}" for r in HOLD_REASONS)
            + " |"
        )
    lines += [
        "",
        "## Live figures of the served answers (the service's scorer)",
        "",
        "| pair | rows | log loss | coin | base rate | last move | served - best baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair, f in per_pair.items():
        if "live_rows" not in f:
            continue
        lines.append(
            f"| {pair} | {f['live_rows']:.0f} | {f['live_log_loss']:.4f} | "
            f"{f.get('live_coin_log_loss', math.nan):.4f} | "
            f"{f.get('live_base_rate_log_loss', math.nan):.4f} | "
            f"{f.get('live_last_move_log_loss', math.nan):.4f} | "
            f"{f['live_vs_best_baseline_mean']:+.4f} [{f['live_vs_best_baseline_low']:+.4f}, "
            f"{f['live_vs_best_baseline_high']:+.4f}] |"
        )
    lines += [
        "",
        "## The lifecycle",
        "",
        "| pair | trainings | admitted | promoted | retired | rejected | drift alarms |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair, f in per_pair.items():
        lines.append(
            f"| {pair} | {f['trainings']:.0f} | {f['admitted']:.0f} | {f['promotions']:.0f} | "
            f"{f['retirements']:.0f} | {f['rejections']:.0f} | {f['drift_alarms']:.0f} |"
        )
    for replay in replays:
        lines += [
            "",
            f"### {replay.pair}: versions",
            "",
            "| version | trained on data to | requested by | gate | then | proof | live rows | "
            "live log loss | minus the best naive baseline |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v in replay.versions:
            steps = [] if v.promoted_at is None else [f"promoted {v.promoted_at:%Y-%m-%d %H:%M}"]
            if v.fate is not None and v.fate != "promoted":
                steps.append(f"{v.fate} {v.fate_at:%Y-%m-%d %H:%M}")
            then = "; ".join(steps)
            lines.append(
                f"| {v.name} | {v.trained_at:%Y-%m-%d %H:%M} | {v.requested_by} | {v.gate} | "
                f"{then} | {'unproven' if v.unproven else 'proven'} | {_live_cells(v.live)} |"
            )
    lines += ["", "## Settings", "", "```json", json.dumps(used, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def _live_cells(figures: live.LiveFigures | None) -> str:
    """Rows, log loss and the paired interval against the best naive baseline, or dashes."""
    if figures is None:
        return "0 | – | –"
    versus = figures.versus_baseline
    return (
        f"{figures.predictions} | {figures.log_loss.value:.4f} | {versus.mean:+.4f} "
        f"[{versus.low:+.4f}, {versus.high:+.4f}] ({figures.best_baseline})"
    )


def decisions_json(replays: list[Replay]) -> dict[str, Any]:
    """Every event with its reason, per pair (the run's `decisions.json`)."""
    return {
        r.pair: [
            {"time": e.time.isoformat(), "kind": e.kind, "version": e.version, "reason": e.reason}
            for e in r.events
        ]
        for r in replays
    }


# --- one backtest, recorded ----------------------------------------------------------------


@dataclass(frozen=True)
class BacktestResult:
    """What `run_backtest` leaves: the replays, the figures, the report and the run."""

    replays: list[Replay]
    per_pair: dict[str, dict[str, float]]
    total: dict[str, float]
    report: Path
    run_id: str


def run_backtest(
    *,
    pairs: list[str],
    model_type: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    settings: Any,
    out: Path,
    command: str,
    overrides: dict[str, Any] | None = None,
) -> BacktestResult:
    """Replay every pair in turn and record the backtest as an MLflow run (the trainings are its
    child runs) with its metrics, plots, `decisions.json` and `report.md` (also written to
    `out/report.md`, with the plots beside it)."""
    import tempfile
    import time

    from mlflow.entities import RunStatus

    from mlproject.backtest import mlflow_trainer, replay
    from mlproject.config import TrainConfig
    from mlproject.loading import load_candles
    from mlproject.tracking import client_for
    from pipelines.tracking import (
        BACKTEST_EXPERIMENT_SUFFIX,
        KIND_BACKTEST,
        TAG_KIND,
        ensure_experiment,
    )

    began = time.monotonic()
    client = client_for(settings)
    experiment = ensure_experiment(
        client, name=settings.experiment_name + BACKTEST_EXPERIMENT_SUFFIX, settings=settings
    )
    title = f"Backtest: {','.join(pairs)} {model_type}, {start:%Y-%m-%d} .. {end:%Y-%m-%d}"
    run = client.create_run(experiment, run_name=title, tags={TAG_KIND: KIND_BACKTEST})
    run_id = run.info.run_id
    params = {
        "pairs": ",".join(pairs),
        "model_type": model_type,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "command": command,
    }
    for name, text in params.items():
        client.log_param(run_id, name, text)
    try:
        with tempfile.TemporaryDirectory(prefix="tbml-backtest-") as tmp:
            replays: list[Replay] = []
            per_pair: dict[str, dict[str, float]] = {}
            curves: dict[str, dict[str, Trading]] = {}
            candles_of: dict[str, pd.DataFrame] = {}
            trainer = mlflow_trainer(
                parent_run_id=run_id, experiment_id=experiment, workdir=Path(tmp) / "bundles"
            )
            for pair in pairs:
                config = TrainConfig.from_settings(settings, pair=pair, model_type=model_type)
                candles = load_candles(config, settings=settings)
                candles_of[pair] = candles
                result = replay(
                    pair=pair,
                    model_type=model_type,
                    start=start,
                    end=end,
                    settings=settings,
                    candles=candles,
                    train=trainer,
                    overrides=overrides,
                )
                replays.append(result)
                per_pair[pair], curves[pair] = pair_figures(
                    result, candles, fee=settings.trading_fee
                )
            total = overall(per_pair, curves, timeframe=settings.timeframe)
            out.mkdir(parents=True, exist_ok=True)
            plots = out / "plots"
            for result in replays:
                pair = result.pair
                plot_equity(result, curves[pair], plots / f"{pair}-equity.png")
                plot_timeline(result, plots / f"{pair}-answers.png")
                plot_live(result, candles_of[pair], plots / f"{pair}-live-log-loss.png")
            client.log_artifacts(run_id, str(plots), "plots")
            for pair, figures in per_pair.items():
                for key, value in figures.items():
                    if math.isfinite(value):
                        client.log_metric(run_id, f"{pair}_{key}", value)
            for key, value in total.items():
                if math.isfinite(value):
                    client.log_metric(run_id, key, value)
            decisions = out / "decisions.json"
            decisions.write_text(json.dumps(decisions_json(replays), indent=1))
            client.log_artifact(run_id, str(decisions))
            report = out / "report.md"
            report.write_text(
                markdown(
                    title=title,
                    command=command,
                    replays=replays,
                    per_pair=per_pair,
                    total=total,
                    seconds=time.monotonic() - began,
                    run_id=run_id,
                )
            )
            client.log_artifact(run_id, str(report))
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return BacktestResult(replays, per_pair, total, report, run_id)
