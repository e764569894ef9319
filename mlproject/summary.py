"""The run's short markdown summary: the model beside the baselines, the signals beside holding."""

from __future__ import annotations

import math

from mlproject.metrics import METRICS
from mlproject.scoring import MODEL, Scores
from mlproject.trading import TRADING_METRICS


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}"


def run_summary(
    *,
    title: str,
    scores: Scores,
    facts: dict[str, str],
) -> str:
    """A page a person reads in the MLflow UI (artifact `summary.md`)."""
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in facts.items()]
    verdict = "beats" if scores.beats_baseline else "does **not** beat"
    rule, paired = scores.rule, scores.verdict
    lines += [
        "",
        f"On the test window the model {verdict} its baselines: its log loss per row minus "
        f"that of the strongest (`{scores.strongest_baseline}`) is {paired.mean:+.4f}, "
        f"{rule.level * 100:g} % interval [{paired.low:+.4f}, {paired.high:+.4f}] over "
        f"{paired.rows} rows (paired Newey-West t-interval of the mean, lag {paired.lag}); "
        "it beats them "
        f"only when every baseline's interval lies below zero by at least {rule.margin:g}. "
        "`tbml verdict RUN_ID` recomputes this from `verdict/predictions.csv`.",
        "",
        "## Paired verdicts (log loss per row, model minus baseline)",
        "",
        "| baseline | mean | low | high | model better |",
        "|---|---:|---:|---:|---|",
    ]
    for name, each in scores.judgement.verdicts.items():
        better = "yes" if each.better(rule.margin) else "no"
        lines.append(
            f"| {name} | {each.mean:+.4f} | {each.low:+.4f} | {each.high:+.4f} | {better} |"
        )
    lines += [
        "",
        "## Classification on the test window",
        "",
        "| predictor | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for name, values in scores.metrics.items():
        label = f"**{name}**" if name == MODEL else name
        lines.append(f"| {label} | " + " | ".join(_fmt(values[m]) for m in METRICS) + " |")
    lines += [
        "",
        "## Trading the signals (fee per trade included)",
        "",
        "| strategy | " + " | ".join(TRADING_METRICS) + " |",
        "|---|" + "---:|" * len(TRADING_METRICS),
    ]
    for name, result in scores.trading.items():
        cells = []
        for metric in TRADING_METRICS:
            value = result.metrics[metric]
            cells.append(str(int(value)) if metric == "n_trades" else _fmt(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Signals: BUY at or above the buy threshold opens a long position, SELL at or below the "
        "sell threshold closes it; no shorting. Hourly direction is close to a coin toss: read "
        "accuracy against the baselines, not against 50 %.",
        "",
    ]
    return "\n".join(lines)
