"""One page from several architectures' walk-forward reports, with a verdict per pair.

`tbml evaluate --combine A.json B.json ... --output docs/evaluation.md` reads the JSON reports
that `tbml evaluate` writes (one per architecture; an interrupted one counts with what it
finished) and says, per pair, which architecture is worth serving, by `RULE`:

1. An architecture qualifies for a pair when, on its folds pooled (fold `all`), the paired
   interval of its seed ensemble against every baseline lies wholly below `-margin` (one
   interval per baseline, on the ensemble's per-row differences pooled over the folds).
2. Of those that qualify, the one of lowest ensemble log loss on the newest test window (the
   last fold, ending at the newest candle: the same rows in every report) is served; where the
   reports' newest windows differ, the lowest pooled ensemble log loss.
3. None qualifies: serve nothing (HOLD), naming the strongest baseline on the newest window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mlproject.evaluate import (
    ENSEMBLE_WORDS,
    INTERVAL_WORDS,
    MODEL,
    FoldReport,
    SeedSummary,
    calibration_line,
    difference,
    figure,
    fold_reports,
    seed_sd,
    seed_table,
    summaries_of,
    summary_table,
    verdict_state,
    verdict_table,
)

RULE = (
    "An architecture qualifies for a pair when, on its folds pooled, the paired interval of its "
    "seed ensemble's per-row log loss minus each baseline's lies wholly below -margin against "
    "every baseline. Of those that qualify, the one of lowest ensemble log loss on the newest "
    "test window (the fold ending at the newest candle, the same rows for every architecture) is "
    "worth serving. If none qualifies: serve nothing, the service answers HOLD."
)


class ReportError(ValueError):
    """A file that is not a usable `tbml evaluate` JSON report."""


@dataclass(frozen=True)
class ArchitectureReport:
    """One architecture's report: its plan, its per-seed folds and their summaries."""

    path: Path
    model_type: str
    plan: dict[str, Any]
    complete: bool
    elapsed_seconds: float
    reports: list[FoldReport]
    summaries: list[SeedSummary]

    def pooled(self, pair: str) -> SeedSummary | None:
        return next((s for s in self.summaries if s.pair == pair and s.fold == "all"), None)

    def newest(self, pair: str) -> SeedSummary | None:
        folds = [s for s in self.summaries if s.pair == pair and s.fold != "all"]
        return max(folds, key=lambda s: s.test_end) if folds else None

    def finished(self) -> list[tuple[str, int]]:
        """(pair, seed) walk-forwards that finished (their pooled fold is written)."""
        return [(r.pair, r.seed) for r in self.reports if r.fold == "all"]


@dataclass(frozen=True)
class Choice:
    """What a pair should serve: an architecture, or None for HOLD, and why."""

    pair: str
    serve: str | None
    reason: str


def load_report(path: Path) -> ArchitectureReport:
    """Read one JSON report of `tbml evaluate`."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read the report {path}: {exc}") from None
    if not isinstance(document, dict) or not {"plan", "folds"} <= set(document):
        raise ReportError(
            f"{path} is not a JSON report of `tbml evaluate` (an object with 'plan' and "
            "'folds'; reports written before multi-seed evaluation are not)"
        )
    reports = fold_reports(document)
    if not reports:
        raise ReportError(f"{path} holds no finished fold")
    try:
        summaries = summaries_of(document)
    except ValueError as exc:
        raise ReportError(f"{path}: {exc}") from None
    return ArchitectureReport(
        path=path,
        model_type=str(document["plan"]["model_type"]),
        plan=document["plan"],
        complete=bool(document.get("complete", False)),
        elapsed_seconds=float(document.get("elapsed_seconds") or 0.0),
        reports=reports,
        summaries=summaries,
    )


def choose(architectures: list[ArchitectureReport], pair: str) -> Choice:
    """Which architecture is worth serving for `pair`, by `RULE`."""
    entries = [
        (a, pooled, newest)
        for a in architectures
        if (pooled := a.pooled(pair)) is not None and (newest := a.newest(pair)) is not None
    ]
    if not entries:
        return Choice(pair=pair, serve=None, reason="no architecture was evaluated on it")
    windows = {(n.test_start, n.test_end) for _, _, n in entries}
    same_window = len(windows) == 1
    qualified = [(a, p, n) for a, p, n in entries if p.beats_baseline]

    def loss(entry: tuple[ArchitectureReport, SeedSummary, SeedSummary]) -> float:
        summary = entry[2] if same_window else entry[1]
        return summary.metrics[MODEL]["log_loss"]

    where = "on the newest window" if same_window else "pooled"
    if qualified:
        best, pooled, newest = min(qualified, key=loss)
        others = [a.model_type for a, _, _ in qualified if a is not best]
        strongest = pooled.strongest_baseline
        summary = newest if same_window else pooled
        rival = summary.strongest_baseline
        reason = (
            f"its {pooled.n}-seed ensemble beats every baseline (folds pooled): model - "
            f"{strongest} {difference(pooled.verdicts[strongest])}; log loss "
            f"{summary.metrics[MODEL]['log_loss']:.4f} {where} against {rival} "
            f"{summary.metrics[rival]['log_loss']:.4f}; seeds alone beating every baseline "
            f"{pooled.beats_seeds}/{pooled.n}"
        )
        if others:
            reason += f"; also qualified, with a higher log loss {where}: {', '.join(others)}"
        return Choice(pair=pair, serve=best.model_type, reason=reason)
    # Nothing qualifies: name the strongest baseline on the newest rows and the nearest miss.
    baselines = list(entries[0][2].verdicts)
    scope = [n for _, _, n in entries] if same_window else [p for _, p, _ in entries]

    def baseline_loss(name: str) -> float:
        return sum(s.metrics[name]["log_loss"] for s in scope) / len(scope)

    strongest = min(baselines, key=baseline_loss)
    nearest, pooled, _ = min(entries, key=loss)
    against = pooled.verdicts[pooled.strongest_baseline]
    state = {"better": "better", "worse": "significantly worse", "undecided": "undecided"}[
        verdict_state(against, pooled.margin)
    ]
    unbeaten = [
        name for name, v in pooled.verdicts.items() if verdict_state(v, pooled.margin) != "better"
    ]
    reason = (
        f"none beats {strongest} (log loss {baseline_loss(strongest):.4f} {where}): serve "
        f"nothing, HOLD. Nearest: {nearest.model_type}, its {pooled.n}-seed ensemble against "
        f"{pooled.strongest_baseline} pooled {difference(against)}, {state}; not shown better "
        f"than {', '.join(unbeaten)}; seeds alone beating every baseline "
        f"{pooled.beats_seeds}/{pooled.n}"
    )
    return Choice(pair=pair, serve=None, reason=reason)


def _command(a: ArchitectureReport) -> str:
    plan = a.plan
    pairs = plan["pairs"]
    target = pairs[0] if len(pairs) == 1 else "--all"
    command = (
        f"tbml evaluate {target} --model-type {a.model_type} --folds {plan['folds']} "
        f"--test-size {plan['test_size']} --epochs {plan['epochs']} "
        f"--seeds {','.join(map(str, plan['seeds']))}"
    )
    if plan["max_rows"]:
        command += f" --max-rows {plan['max_rows']}"
    return command


# Every figure of the page: four decimals (accuracy in %, one).
_shown = partial(figure, digits=4)
_sd = partial(seed_sd, digits=4)


def _pair_table(architectures: list[ArchitectureReport], pair: str) -> list[str]:
    lines = [
        "| architecture | seeds | folds | log loss, newest window | log loss sd over seeds, "
        "newest window | log loss, pooled | accuracy %, pooled | ROC AUC, pooled | strongest "
        "baseline, pooled (log loss) | model - strongest, pooled | beats every baseline | "
        "seeds alone beating every baseline | seeds alone worse than strongest |",
        "|---|---:|---:|---|---|---|---|---|---|---|---|---:|---:|",
    ]
    newest_baselines: SeedSummary | None = None
    for a in architectures:
        pooled, newest = a.pooled(pair), a.newest(pair)
        if pooled is None or newest is None:
            lines.append(f"| {a.model_type} | 0 | | not evaluated | | | | | | | | | |")
            continue
        newest_baselines = newest_baselines or newest
        strongest = pooled.strongest_baseline
        folds = len({s.fold for s in a.summaries if s.pair == pair and s.fold != "all"})
        lines.append(
            f"| {a.model_type} | {pooled.n} | {folds} | "
            f"{_shown(newest, MODEL, 'log_loss', interval=False)} | "
            f"{_sd(newest, MODEL, 'log_loss')} | {_shown(pooled, MODEL, 'log_loss')} | "
            f"{_shown(pooled, MODEL, 'accuracy', pct=True)} | "
            f"{_shown(pooled, MODEL, 'roc_auc')} | "
            f"{strongest} ({pooled.metrics[strongest]['log_loss']:.4f}) | "
            f"{difference(pooled.verdicts[strongest])} | "
            f"{'yes' if pooled.beats_baseline else 'no'} | {pooled.beats_seeds}/{pooled.n} | "
            f"{pooled.seed_verdicts[strongest]['worse']}/{pooled.n} |"
        )
    if newest_baselines is not None:
        s = newest_baselines
        lines += [
            "",
            f"The baselines on the newest window ({s.test_start[:10]} .. {s.test_end[:10]}, "
            f"{s.rows} rows; fitted on the same training rows as the first architecture above, "
            "LightGBM ensembled over its seeds):",
            "",
            "| baseline | log loss | accuracy % | ROC AUC |",
            "|---|---|---|---|",
        ]
        for name in s.verdicts:
            lines.append(
                f"| {name} | {_shown(s, name, 'log_loss')} | "
                f"{_shown(s, name, 'accuracy', pct=True)} | {_shown(s, name, 'roc_auc')} |"
            )
    return lines


def headline_table(architectures: list[ArchitectureReport], pairs: list[str]) -> str:
    """Per pair: what to serve, and the lowest-loss architecture on the newest window beside the
    strongest baseline there."""
    lines = [
        "| pair | serve | lowest log loss, newest window (seed ensemble; sd over seeds) | "
        "strongest baseline there | it minus its strongest baseline, pooled | beats every "
        "baseline |",
        "|---|---|---|---|---|---|",
    ]
    for pair in pairs:
        entries = [
            (a, pooled, newest)
            for a in architectures
            if (pooled := a.pooled(pair)) is not None and (newest := a.newest(pair)) is not None
        ]
        if not entries:
            continue
        a, pooled, newest = min(entries, key=lambda e: e[2].metrics[MODEL]["log_loss"])
        rival, strongest = newest.strongest_baseline, pooled.strongest_baseline
        serve = choose(architectures, pair).serve or "nothing (HOLD)"
        lines.append(
            f"| {pair} | {serve} | {a.model_type} "
            f"{_shown(newest, MODEL, 'log_loss', interval=False)} (sd "
            f"{_sd(newest, MODEL, 'log_loss')}) | "
            f"{rival} {newest.metrics[rival]['log_loss']:.4f} | "
            f"{strongest}: {difference(pooled.verdicts[strongest])} | "
            f"{'yes' if pooled.beats_baseline else 'no'} |"
        )
    return "\n".join(lines)


def combine_reports(
    paths: list[Path], *, notes: list[str] | None = None, sections: list[str] | None = None
) -> str:
    """The page: the verdict per pair, the markdown `sections` as given, each pair's
    architectures side by side, then every architecture's folds.

    Raises:
        ReportError: a path that is not a report, or two reports of one architecture.
    """
    architectures = [load_report(path) for path in paths]
    seen: dict[str, Path] = {}
    for a in architectures:
        if a.model_type in seen:
            raise ReportError(
                f"two reports of {a.model_type}: {seen[a.model_type]} and {a.path}; "
                "give one per architecture"
            )
        seen[a.model_type] = a.path
    pairs: list[str] = []
    for a in architectures:
        pairs += [p for p in a.plan["pairs"] if p not in pairs]
    metric = "log_loss"
    lines = [
        "# Walk-forward evaluation: every architecture",
        "",
        "Generated by `tbml evaluate --combine` from the JSON reports of `tbml evaluate`, one "
        "per architecture; every number below comes from them.",
        "",
        "## How it was made",
        "",
    ]
    for a in architectures:
        plan = a.plan
        finished = a.finished()
        planned = len(plan["pairs"]) * len(plan["seeds"])
        state = (
            "complete"
            if a.complete
            else f"**incomplete**: {len(finished)} of {planned} pair x seed walk-forwards finished"
        )
        lines.append(
            f"- **{a.model_type}**: `{_command(a)}`; pairs {', '.join(plan['pairs'])}; "
            f"{plan['folds']} fold{'' if plan['folds'] == 1 else 's'} of {plan['test_size']:,} "
            "hourly test rows, the last ending at the newest candle; at most "
            f"{plan['epochs']} epochs (patience {plan['patience']}); "
            f"seeds {', '.join(map(str, plan['seeds']))}"
            + (f"; newest {plan['max_rows']:,} candles only" if plan["max_rows"] else "")
            + f"; {a.elapsed_seconds / 60:.1f} min; {state}. {calibration_line(a.reports)}"
        )
    lines += [f"- {note}" for note in notes or []]
    lines += [
        "",
        "## Which architecture is worth serving, per pair",
        "",
        f"The rule: {RULE}",
        "",
        "| pair | serve | why |",
        "|---|---|---|",
    ]
    for pair in pairs:
        choice = choose(architectures, pair)
        lines.append(f"| {pair} | {choice.serve or 'nothing (HOLD)'} | {choice.reason} |")
    lines += [
        "",
        "The architecture of lowest log loss on the newest window, per pair, beside the "
        "strongest baseline on the same rows:",
        "",
        headline_table(architectures, pairs),
        "",
        ENSEMBLE_WORDS,
        "",
        INTERVAL_WORDS + " `seeds alone worse than strongest`: seeds whose own interval against "
        "the strongest baseline lies wholly above +margin. The baselines are fitted on each "
        "fold's training rows.",
    ]
    for section in sections or []:
        lines += ["", section.strip()]
    for pair in pairs:
        lines += ["", f"## {pair}", "", *_pair_table(architectures, pair)]
    for a in architectures:
        lines += [
            "",
            f"## {a.model_type}: every fold",
            "",
            summary_table(a.summaries, metric=metric),
            "",
            verdict_table(a.summaries),
            "",
            "Every seed alone: the model's log loss and, against each baseline, its log loss per "
            "row minus the baseline's, mean [95 % interval]; `epochs`: the kept epoch / epochs "
            "run.",
            "",
            seed_table(a.reports),
        ]
    lines.append("")
    return "\n".join(lines)
