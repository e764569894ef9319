"""Verdicts anyone can recompute: a run's per-row probabilities, and `tbml verdict`.

A training run saves, beside its metrics, what its "beats" was made of:

- `verdict/predictions.csv`: one row per test candle, oldest first: `timestamp` (the candle the
  prediction is made at, UTC), `outcome` (1 when the close `horizon` candles later is higher),
  then the probability of "up" of the model and of every baseline, one column each;
- `verdict/verdict.json`: the rule (`VerdictRule`: metric, method, margin, level) and the
  verdicts the run logged.

`tbml verdict RUN_ID` recomputes the model against each baseline from those two files alone,
with the lifecycle's paired interval (a run saved when verdicts were bootstrapped is recomputed
with today's interval, under its own margin and level);
`tbml verdict RUN_ID OTHER_RUN_ID` compares the first run's model with the second's on the rows
both hold (same candles, same outcomes), under the first run's rule.

The names of the run's verdict metrics and of the version's verdict tags are defined here.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import numpy as np
import pandas as pd
import typer

from mlproject.scoring import MODEL, Judgement, Scores, VerdictRule, judge
from pipelines.lifecycle.intervals import PairedVerdict

PREDICTIONS_ARTIFACT = "verdict/predictions.csv"
VERDICT_ARTIFACT = "verdict/verdict.json"
TIMESTAMP, OUTCOME = "timestamp", "outcome"

# Tags of a registered version: the verdict against the strongest baseline.
TAG_BEATS_AGAINST = "tbml.beats_against"
TAG_BEATS_MEAN = "tbml.beats_mean_difference"
TAG_BEATS_LOW = "tbml.beats_interval_low"
TAG_BEATS_HIGH = "tbml.beats_interval_high"
TAG_BEATS_ROWS = "tbml.beats_rows"


class VerdictError(ValueError):
    """A verdict cannot be recomputed: unknown run, missing or malformed artifacts."""


def verdict_metrics(scores: Scores) -> dict[str, float]:
    """The run's metrics of its verdict.

    `beats_*` is the model against the strongest baseline (log loss per row, model minus
    baseline: negative favours the model); `verdict_<baseline>_*` the same against each one.
    """
    verdict = scores.verdict
    values = {
        "beats_mean_difference": verdict.mean,
        "beats_interval_low": verdict.low,
        "beats_interval_high": verdict.high,
        "beats_rows": float(verdict.rows),
        "beats_lag": float(verdict.lag),
        "beats_margin": scores.rule.margin,
    }
    for name, each in scores.judgement.verdicts.items():
        values.update(
            {
                f"verdict_{name}_mean": each.mean,
                f"verdict_{name}_low": each.low,
                f"verdict_{name}_high": each.high,
            }
        )
    return values


def verdict_tags(scores: Scores) -> dict[str, str]:
    """A registered version's tags of its verdict against the strongest baseline."""
    verdict = scores.verdict
    return {
        TAG_BEATS_AGAINST: scores.strongest_baseline,
        TAG_BEATS_MEAN: repr(verdict.mean),
        TAG_BEATS_LOW: repr(verdict.low),
        TAG_BEATS_HIGH: repr(verdict.high),
        TAG_BEATS_ROWS: str(verdict.rows),
    }


def record(scores: Scores) -> dict[str, Any]:
    """What `verdict/verdict.json` holds (and the model's metadata, as `beats_verdict`)."""
    return {
        "rule": scores.rule.to_dict(),
        "model": MODEL,
        "baselines": [name for name in scores.predictions if name != MODEL],
        "strongest_baseline": scores.strongest_baseline,
        "beats_baseline": scores.beats_baseline,
        "verdicts": {name: v.to_dict() for name, v in scores.judgement.verdicts.items()},
    }


def predictions_frame(timestamps: pd.DatetimeIndex, scores: Scores) -> pd.DataFrame:
    """The per-row artifact: candle time, outcome, then each predictor's probability of up."""
    if len(timestamps) != scores.y.size:
        raise ValueError(f"{len(timestamps)} timestamps for {scores.y.size} scored rows")
    columns: dict[str, Any] = {
        TIMESTAMP: [pd.Timestamp(t).isoformat() for t in timestamps],
        OUTCOME: scores.y.astype(np.int8),
    }
    columns.update({name: p.proba for name, p in scores.predictions.items()})
    return pd.DataFrame(columns)


def log_artifacts(timestamps: pd.DatetimeIndex, scores: Scores) -> None:
    """Log the per-row predictions and the verdict record into the active run."""
    import mlflow

    # CSV floats are written shortest-round-trip, so a recomputation reads the same numbers.
    mlflow.log_text(predictions_frame(timestamps, scores).to_csv(index=False), PREDICTIONS_ARTIFACT)
    mlflow.log_text(json.dumps(record(scores), indent=2) + "\n", VERDICT_ARTIFACT)


@dataclass(frozen=True)
class RunRows:
    """A run's saved per-row predictions and the rule and verdicts it logged."""

    run_id: str
    frame: pd.DataFrame
    rule: VerdictRule
    logged: dict[str, Any]

    @property
    def predictors(self) -> list[str]:
        return [c for c in self.frame.columns if c not in (TIMESTAMP, OUTCOME)]


def load_run(tracking_uri: str, run_id: str) -> RunRows:
    """The per-row artifacts of `run_id` in the tracking store at `tracking_uri`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise VerdictError(
            f"run {run_id!r} is not in the tracking store {tracking_uri}: give the id of a "
            "training run (`tbml train` prints it; MLFLOW_TRACKING_URI names the store)"
        ) from None
    with tempfile.TemporaryDirectory(prefix="tbml-verdict-") as tmp:
        try:
            csv = Path(client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, tmp))
            record_path = Path(client.download_artifacts(run_id, VERDICT_ARTIFACT, tmp))
        except (MlflowException, OSError):
            raise VerdictError(
                f"run {run_id!r} has no {PREDICTIONS_ARTIFACT} and {VERDICT_ARTIFACT}: only "
                "training runs save their per-row predictions (runs trained before they did "
                "cannot be recomputed)"
            ) from None
        frame = pd.read_csv(csv)
        logged = json.loads(record_path.read_text())
    _check_frame(run_id, frame)
    return RunRows(
        run_id=run_id, frame=frame, rule=VerdictRule.from_dict(logged["rule"]), logged=logged
    )


def _check_frame(run_id: str, frame: pd.DataFrame) -> None:
    missing = [c for c in (TIMESTAMP, OUTCOME, MODEL) if c not in frame.columns]
    if missing:
        raise VerdictError(
            f"{PREDICTIONS_ARTIFACT} of run {run_id!r} lacks the columns {missing}: it has "
            f"{list(frame.columns)}"
        )
    if len(frame) == 0:
        raise VerdictError(f"{PREDICTIONS_ARTIFACT} of run {run_id!r} has no rows")


def recompute(rows: RunRows, *, margin: float | None = None) -> Judgement:
    """The model against each baseline of `rows`, under its logged rule (or another margin)."""
    rule = _with_margin(rows.rule, margin)
    frame = rows.frame
    probas = {name: frame[name].to_numpy(dtype=np.float64) for name in rows.predictors}
    return judge(frame[OUTCOME].to_numpy(), probas, rule=rule)


@dataclass(frozen=True)
class ModelComparison:
    """The first run's model against the second's on the rows both hold."""

    verdict: PairedVerdict
    rule: VerdictRule
    first: str
    second: str


def compare_runs(
    first: RunRows, second: RunRows, *, margin: float | None = None
) -> ModelComparison:
    """Model of `first` minus model of `second`, per-row log loss on their shared candles."""
    shared = first.frame[[TIMESTAMP, OUTCOME, MODEL]].merge(
        second.frame[[TIMESTAMP, OUTCOME, MODEL]],
        on=TIMESTAMP,
        suffixes=("_first", "_second"),
        validate="one_to_one",
    )
    if shared.empty:
        raise VerdictError(
            f"runs {first.run_id!r} and {second.run_id!r} share no scored candle: the first "
            f"covers {_span(first.frame)}, the second {_span(second.frame)}"
        )
    differ = shared[f"{OUTCOME}_first"] != shared[f"{OUTCOME}_second"]
    if differ.any():
        at = shared.loc[differ, TIMESTAMP].iloc[0]
        raise VerdictError(
            f"runs {first.run_id!r} and {second.run_id!r} disagree on the outcome of "
            f"{int(differ.sum())} shared candles (first {at}): they predict different horizons, "
            "so their losses cannot be paired"
        )
    shared = shared.sort_values(TIMESTAMP, key=lambda t: pd.to_datetime(t, utc=True))
    rule = _with_margin(first.rule, margin)
    verdict = rule.compare(
        shared[f"{OUTCOME}_first"].to_numpy(),
        shared[f"{MODEL}_first"].to_numpy(dtype=np.float64),
        shared[f"{MODEL}_second"].to_numpy(dtype=np.float64),
    )
    return ModelComparison(verdict=verdict, rule=rule, first=first.run_id, second=second.run_id)


def _with_margin(rule: VerdictRule, margin: float | None) -> VerdictRule:
    if margin is None:
        return rule
    if not math.isfinite(margin):
        raise VerdictError(f"margin must be a finite number of nats per row, got {margin!r}")
    return VerdictRule(margin=margin, level=rule.level)


def _span(frame: pd.DataFrame) -> str:
    return f"{frame[TIMESTAMP].iloc[0]} .. {frame[TIMESTAMP].iloc[-1]}" if len(frame) else "none"


def _interval(v: PairedVerdict) -> str:
    return f"mean {v.mean:+.5f} [{v.low:+.5f}, {v.high:+.5f}]"


def _outcome(v: PairedVerdict, margin: float) -> str:
    if v.better(margin):
        return "better"
    if v.worse(margin):
        return "worse"
    return "no difference shown"


def render_judgement(rows: RunRows, judgement: Judgement, rule: VerdictRule) -> str:
    """The one-run verdict as a person reads it."""
    n = int(rows.frame.shape[0])
    lines = [
        f"run {rows.run_id}: model against each baseline on {n} test rows",
        f"log loss per row, model minus baseline (negative favours the model); "
        f"{rule.level * 100:g} % Newey-West t-interval of the mean, lag "
        f"{judgement.verdict.lag}; margin {rule.margin:g}",
    ]
    width = max(len(name) for name in judgement.verdicts)
    for name, v in judgement.verdicts.items():
        lines.append(f"  {name:<{width}}  {_interval(v)}  {_outcome(v, rule.margin)}")
    lines += [
        f"strongest baseline: {judgement.strongest_baseline}",
        f"beats_baseline: {str(judgement.beats_baseline).lower()}",
    ]
    return "\n".join(lines)


def render_comparison(comparison: ModelComparison) -> str:
    """The two-run verdict as a person reads it."""
    v, rule = comparison.verdict, comparison.rule
    if v.better(rule.margin):
        says = f"the model of run {comparison.first} is better"
    elif v.worse(rule.margin):
        says = f"the model of run {comparison.second} is better"
    else:
        says = "neither model is shown better"
    return "\n".join(
        [
            f"model of run {comparison.first} against model of run {comparison.second} on the "
            f"{v.rows} test rows both hold",
            f"log loss per row, first minus second: {_interval(v)} ({rule.level * 100:g} % "
            f"Newey-West t-interval of the mean, lag {v.lag}; margin {rule.margin:g})",
            f"verdict: {says}",
        ]
    )


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def verdict(
    run_id: Annotated[str, typer.Argument(help="A training run's id.")],
    other_run_id: Annotated[
        str | None,
        typer.Argument(help="A second training run: its model against the first's, paired."),
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(help="Nats per row the interval must clear (default: the run's own)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """Recompute a run's verdict from its saved per-row predictions (or compare two runs)."""
    from pipelines.settings import get_settings

    uri = get_settings().tracking_uri
    try:
        first = load_run(uri, run_id)
        if other_run_id is None:
            rule = _with_margin(first.rule, margin)
            judgement = recompute(first, margin=margin)
            text = render_judgement(first, judgement, rule)
            data: dict[str, Any] = {
                "run_id": run_id,
                "rule": rule.to_dict(),
                "strongest_baseline": judgement.strongest_baseline,
                "beats_baseline": judgement.beats_baseline,
                "verdicts": {k: v.to_dict() for k, v in judgement.verdicts.items()},
            }
        else:
            comparison = compare_runs(first, load_run(uri, other_run_id), margin=margin)
            text = render_comparison(comparison)
            data = {
                "run_id": run_id,
                "other_run_id": other_run_id,
                "rule": comparison.rule.to_dict(),
                "first_better": comparison.verdict.better(comparison.rule.margin),
                "second_better": comparison.verdict.worse(comparison.rule.margin),
                "verdict": comparison.verdict.to_dict(),
            }
    except VerdictError as exc:
        _fail(exc)
    typer.echo(json.dumps(data, indent=2) if as_json else text)


def register(app: typer.Typer) -> None:
    """Add `verdict` to `tbml`."""
    app.command("verdict")(verdict)
