"""The markdown of a walk-forward report: how it was made, the seed ensembles' summary and
paired verdicts, every predictor and every seed.

`render_markdown` writes one model type's report from its JSON document; the tables, cells and
words it is made of (`summary_table`, `figure`, `ENSEMBLE_WORDS`, ...) are also the combined
page's (`mlproject.evaluation_page`).
"""

from __future__ import annotations

import math
from typing import Any

from mlproject.evaluation_records import FoldReport, SeedSummary, fold_reports, summaries_of
from mlproject.scoring import MODEL
from pipelines.settings import NETWORK_TYPES


def _cell(
    value: float, interval: tuple[float, float] | None = None, *, pct: bool = False, digits: int = 3
) -> str:
    if math.isnan(value):
        return "—"
    scale, places = (100.0, 1) if pct else (1.0, digits)
    text = f"{value * scale:.{places}f}"
    if interval is not None and not math.isnan(interval[0]):
        text += f" [{interval[0] * scale:.{places}f}, {interval[1] * scale:.{places}f}]"
    return text


def figure(
    summary: SeedSummary,
    name: str,
    metric: str,
    *,
    pct: bool = False,
    digits: int = 3,
    interval: bool = True,
) -> str:
    """The seed ensemble's value of `metric` for predictor `name`, with its 95 % interval where
    the metric has one (and `interval`). Accuracy (`pct`) in %, one decimal."""
    bounds = summary.intervals[name].get(metric) if interval else None
    return _cell(summary.metrics[name][metric], bounds, pct=pct, digits=digits)


def seed_sd(
    summary: SeedSummary, name: str, metric: str, *, pct: bool = False, digits: int = 3
) -> str:
    """The standard deviation of `metric` over the seeds taken one by one ("—" for one seed)."""
    return _cell(summary.seed_sd[name][metric], pct=pct, digits=digits)


def difference(verdict: dict[str, Any]) -> str:
    """A paired verdict's mean and 95 % interval, four decimals: `+0.0012 [-0.0030, +0.0054]`."""
    return f"{verdict['mean']:+.4f} [{verdict['low']:+.4f}, {verdict['high']:+.4f}]"


def _seeds_text(seeds: tuple[int, ...] | list[int]) -> str:
    return ", ".join(map(str, seeds))


def summary_table(summaries: list[SeedSummary], *, metric: str) -> str:
    """One row per pair and fold: the seed ensemble against its strongest baseline."""
    lines = [
        "| pair | fold | test window (UTC) | rows | seeds | model accuracy % | model ROC AUC | "
        f"model {metric} | {metric} sd over seeds | strongest baseline ({metric}) | "
        "model - strongest | beats every baseline | seeds alone beating every baseline |",
        "|---|---|---|---:|---:|---|---|---|---|---|---|---|---:|",
    ]
    for s in summaries:
        strongest = s.strongest_baseline
        lines.append(
            f"| {s.pair} | {s.fold} | {s.test_start[:10]} .. {s.test_end[:10]} | {s.rows} | "
            f"{s.n} | {figure(s, MODEL, 'accuracy', pct=True)} | "
            f"{figure(s, MODEL, 'roc_auc')} | {figure(s, MODEL, metric)} | "
            f"{seed_sd(s, MODEL, metric, digits=4)} | "
            f"{strongest} ({figure(s, strongest, metric, interval=False)}) | "
            f"{difference(s.verdicts[strongest])} | {'yes' if s.beats_baseline else 'no'} | "
            f"{s.beats_seeds}/{s.n} |"
        )
    return "\n".join(lines)


def verdict_state(verdict: dict[str, Any], margin: float) -> str:
    """better (interval wholly below -margin), worse (wholly above +margin) or undecided."""
    if float(verdict["high"]) < -margin:
        return "better"
    if float(verdict["low"]) > margin:
        return "worse"
    return "undecided"


def verdict_table(summaries: list[SeedSummary]) -> str:
    """One row per pair, fold and baseline: the seed ensemble's paired verdict."""
    lines = [
        "| pair | fold | baseline | baseline log loss | model log loss | model - baseline "
        "(95 % interval) | lag | model | seeds alone better | seeds alone worse |",
        "|---|---|---|---|---|---|---:|---|---:|---:|",
    ]
    for s in summaries:
        for name, verdict in s.verdicts.items():
            counts = s.seed_verdicts[name]
            lines.append(
                f"| {s.pair} | {s.fold} | {name} | {figure(s, name, 'log_loss', interval=False)} | "
                f"{figure(s, MODEL, 'log_loss', interval=False)} | {difference(verdict)} | "
                f"{verdict['lag']} | {verdict_state(verdict, s.margin)} | "
                f"{counts['better']}/{s.n} | {counts['worse']}/{s.n} |"
            )
    return "\n".join(lines)


def span(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def folds_got_text(document: dict[str, Any]) -> str:
    """Per pair, the folds each seed reached: "BTC folds 3-6 (seed 42), 6 (seed 43)"."""
    plan = document["plan"]
    got: dict[str, dict[str, list[int]]] = document.get("folds_got") or {}
    parts = []
    for pair in plan["pairs"]:
        folds = got.get(pair, {})
        each = [
            f"{span([int(f) for f, seeds in folds.items() if seed in seeds])} (seed {seed})"
            for seed in plan["seeds"]
            if any(seed in seeds for seeds in folds.values())
        ]
        parts.append(f"{pair} folds {', '.join(each)}" if each else f"{pair} no fold")
    return "; ".join(parts)


def incomplete_line(document: dict[str, Any]) -> str:
    """Why a report is incomplete, and the folds of `folds * seeds` it got per pair."""
    plan = document["plan"]
    why = (
        f"stopped when its budget of {plan['budget_minutes']:g} min was spent"
        if document.get("stopped") == "budget"
        else "interrupted or still running"
    )
    return (
        f"**Incomplete** ({why}; running the same command again resumes it): of "
        f"{plan['folds']} folds x {len(plan['seeds'])} seeds per pair it got "
        f"{folds_got_text(document)}."
    )


def calibration_line(reports: list[FoldReport]) -> str:
    """One sentence: which calibrator the folds chose, and the model's log loss before and after."""
    folds = [r for r in reports if r.fold != "all"]
    chosen = [r.extra["calibration"]["method"] for r in folds if "calibration" in r.extra]
    if not chosen:
        return "Test probabilities uncalibrated: the model's own."
    counts = ", ".join(f"{m} on {chosen.count(m)}" for m in sorted(set(chosen)))
    before = [float(r.extra["raw_log_loss"]) for r in folds if "raw_log_loss" in r.extra]
    after = [r.metrics[MODEL]["log_loss"] for r in folds if "raw_log_loss" in r.extra]
    return (
        f"Test probabilities calibrated on each fold's validation rows (ML_CALIBRATION): {counts} "
        f"of {len(folds)} fold x seed fits; the model's test log loss, mean over them, "
        f"{sum(before) / len(before):.4f} before calibration and {sum(after) / len(after):.4f} "
        "after (the figures below)."
    )


def render_markdown(document: dict[str, Any]) -> str:
    """The report of a JSON document (`report_document`): how it was made, a summary row per
    pair and fold, the paired verdicts against every baseline, every predictor, every seed."""
    plan, model = document["plan"], document["model"]
    reports = fold_reports(document)
    summaries = summaries_of(document)
    metric = model["metric"]
    rule = reports[0].rule if reports else {}
    seeds = plan["seeds"]
    lines = [
        f"# Walk-forward evaluation: {plan['model_type']}",
        "",
        *([] if document["complete"] else [incomplete_line(document), ""]),
        f"- Pairs: {', '.join(plan['pairs'])}; {plan['folds']} expanding folds of "
        f"{plan['test_size']} hourly test samples each, the last ending at the newest candle"
        + (f" (newest {plan['max_rows']} candles only)" if plan["max_rows"] else "")
        + ".",
        (
            f"- Model: {plan['model_type']}, {model['layers']} layers x {model['units']} units, "
            f"dropout {model['dropout']}, sequence length {model['sequence_length']}, horizon "
            f"{model['horizon']}, batch {model['batch_size']}; at most {plan['epochs']} epochs, "
            f"early stopping on validation loss (patience {plan['patience']}), best weights "
            f"restored; seeds {_seeds_text(seeds)}."
            if plan["model_type"] in NETWORK_TYPES
            else f"- Model: {plan['model_type']} (mlproject/tabular.py) on the last step of "
            f"windows of {model['sequence_length']} candles, horizon {model['horizon']}; "
            "LightGBM early-stopped on the validation rows; seeds "
            f"{_seeds_text(seeds)}."
        ),
        "- Each fold: purge gap of sequence_length + horizon between train, validation "
        f"({model['validation_fraction']:.0%} of the pre-test samples) and test; scaler fitted "
        "on the training rows only; baselines fitted on the same training rows.",
        f"- {ENSEMBLE_WORDS} Fold `all` pools the folds' rows.",
        f"- {INTERVAL_WORDS} The margin is {rule.get('margin', 0.0):g} (ML_PROMOTION_MARGIN).",
        f"- {calibration_line(reports)}",
        f"- Took {document['elapsed_seconds'] / 60:.1f} min.",
        "",
        "## Summary",
        "",
        summary_table(summaries, metric=metric),
        "",
        "## Paired verdicts against every baseline",
        "",
        verdict_table(summaries),
        "",
        "## Every predictor",
        "",
        "The seed ensemble's figures; `sd`: the standard deviation of each seed's own log loss.",
        "",
        "| pair | fold | predictor | accuracy % | balanced accuracy % | ROC AUC | log loss "
        "| log loss sd over seeds | Brier |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        for name in s.metrics:
            label = f"**{name}**" if name == MODEL else name
            lines.append(
                f"| {s.pair} | {s.fold} | {label} | "
                f"{figure(s, name, 'accuracy', pct=True)} | "
                f"{figure(s, name, 'balanced_accuracy', pct=True)} | "
                f"{figure(s, name, 'roc_auc')} | {figure(s, name, 'log_loss')} | "
                f"{seed_sd(s, name, 'log_loss', digits=4)} | {figure(s, name, 'brier')} |"
            )
    lines += [
        "",
        "## Every seed",
        "",
        "Each seed alone: the model's log loss and, against each baseline, its log loss per row "
        "minus the baseline's, mean [95 % interval]. `epochs`: the kept epoch / epochs run.",
        "",
        seed_table(reports),
        "",
    ]
    return "\n".join(lines)


ENSEMBLE_WORDS = (
    "Seeds ensembled: each predictor's probability of up is averaged over the seeds, row by row, "
    "and the ensemble is scored and judged once (the deterministic baselines are the same under "
    "every seed; LightGBM's column sampling takes the seed, so it is ensembled too). `sd over "
    "seeds`: the standard deviation of each seed's own figure (the seed spread); `seeds alone`: "
    "how many seeds, each judged alone, reach the verdict."
)
INTERVAL_WORDS = (
    "Intervals (95 %): Wilson for accuracy; for log loss and for `model - baseline` (the "
    "model's log loss per row minus the baseline's on the same rows), a Newey-West t-interval of "
    "the mean (`pipelines.lifecycle.intervals.paired_interval`, `lag` its bandwidth), whose "
    "coverage `python -m bench.verdict_coverage` measures; ROC AUC has no per-row form and is a "
    "point estimate. `beats every baseline`: every interval lies wholly below -margin."
)


def seed_table(reports: list[FoldReport]) -> str:
    """One row per pair, fold and seed: the model's log loss and its verdict on every baseline."""
    baselines = list(reports[0].verdicts) if reports else []
    lines = [
        "| pair | fold | seed | model log loss | epochs | "
        + " | ".join(f"- {name}" for name in baselines)
        + " | beats |",
        "|---|---|---:|---|---|" + "---|" * len(baselines) + "---|",
    ]
    pair_order = {pair: i for i, pair in enumerate(dict.fromkeys(r.pair for r in reports))}

    def order(r: FoldReport) -> tuple[int, int, int]:
        return (pair_order[r.pair], 10**6 if r.fold == "all" else int(r.fold), r.seed)

    for r in sorted(reports, key=order):
        epochs = f"{r.best_epoch + 1}/{r.epochs_run}" if r.epochs_run else ""
        lines.append(
            f"| {r.pair} | {r.fold} | {r.seed} | {_cell(r.metrics[MODEL]['log_loss'])} | "
            f"{epochs} | "
            + " | ".join(difference(r.verdicts[name]) for name in baselines)
            + f" | {'yes' if r.beats_baseline else 'no'} |"
        )
    return "\n".join(lines)
