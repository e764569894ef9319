"""One page from several model types' walk-forward reports: what each pair serves, and why.

`tbml evaluate --combine A.json B.json ... --output docs/evaluation.md` reads the JSON reports
that `tbml evaluate` writes (one per model type; an interrupted one counts with what it finished)
and decides, per pair and pooled over the pairs, by `RULE`, fixed before any figure was seen:
the type is chosen on the earlier folds and confirmed on the newest ones, which the choice never
looks at.

Every comparison is paired: two forecasters' per-row log losses on the same candles (matched by
candle time), each a seed ensemble. Pooled over pairs, each test hour's difference is averaged
over the pairs that have that hour, and the paired interval runs over that hourly series in time
(`pipelines.lifecycle.intervals.paired_interval`): the pairs of one hour move together, so they
are one observation, not four.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial, reduce
from pathlib import Path
from typing import Any

import numpy as np

from mlproject.evaluate import report_label
from mlproject.evaluation_records import (
    FoldReport,
    FoldRows,
    Key,
    SeedSummary,
    concatenated,
    ensemble,
    fold_reports,
    record_rows,
    summaries_of,
)
from mlproject.evaluation_text import (
    ENSEMBLE_WORDS,
    INTERVAL_WORDS,
    calibration_line,
    difference,
    figure,
    folds_got_text,
    seed_sd,
    seed_table,
    span,
    summary_table,
    verdict_table,
)
from mlproject.scoring import MODEL
from pipelines.features.params import DEFAULT_SET
from pipelines.lifecycle.intervals import PairedVerdict, paired_interval
from pipelines.lifecycle.scores import log_losses
from pipelines.settings import EVALUATED_FEATURE_SETS, NETWORK_TYPES

POOLED = "pooled"
REFERENCE = "logistic"  # the baseline a choice must be confirmed against
CONFIRM_FOLDS = 2

RULE = (
    "Per pair, the test windows of all the reports are ordered in time; the newest "
    "`confirm_folds` confirm and the earlier ones choose. Choice: of the model types with rows on "
    "the choosing windows, the one of lowest mean log loss (seed ensemble) on the choosing rows "
    "they all share. Confirmation: the chosen type's per-row log loss minus logistic "
    "regression's on the confirming windows only, through the paired interval; confirmed when "
    "the whole interval lies below zero. Served by default: the confirmed choice; an unconfirmed "
    "choice serves nothing (the service answers HOLD). Pooled: the same, each hour's log loss "
    "(or difference) averaged over the pairs that have it."
)

Window = tuple[str, str]  # first and last test candle of a fold, ISO 8601


class ReportError(ValueError):
    """A file that is not a usable `tbml evaluate` JSON report."""


@dataclass(frozen=True)
class ArchitectureReport:
    """One model type's report: its plan, its per-seed folds, their summaries and rows."""

    path: Path
    model_type: str
    plan: dict[str, Any]
    complete: bool
    elapsed_seconds: float
    reports: list[FoldReport]
    summaries: list[SeedSummary]
    rows: dict[Key, FoldRows] = field(default_factory=dict, repr=False)
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _series: dict[str, FoldRows | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def pooled(self, pair: str) -> SeedSummary | None:
        return next((s for s in self.summaries if s.pair == pair and s.fold == "all"), None)

    def newest(self, pair: str) -> SeedSummary | None:
        folds = [s for s in self.summaries if s.pair == pair and s.fold != "all"]
        return max(folds, key=lambda s: s.test_end) if folds else None

    def finished(self) -> list[tuple[str, int]]:
        """(pair, seed) walk-forwards that finished (their pooled fold is written)."""
        return [(r.pair, r.seed) for r in self.reports if r.fold == "all"]

    def windows(self, pair: str) -> dict[Window, str]:
        """The test windows of `pair` this report has, each with its fold number."""
        return {
            (s.test_start, s.test_end): s.fold
            for s in self.summaries
            if s.pair == pair and s.fold != "all"
        }

    def series(self, pair: str) -> FoldRows | None:
        """Every test row of `pair`, in time order: per fold the seed ensemble of the seeds that
        reached it (None when the pair was not evaluated)."""
        if pair not in self._series:
            folds = sorted(
                {(r.test_start, r.fold) for r in self.reports if r.pair == pair and r.fold != "all"}
            )
            parts = [
                ensemble(
                    [
                        self.rows[(pair, fold, r.seed)]
                        for r in self.reports
                        if (r.pair, r.fold) == (pair, fold)
                    ]
                )
                for _, fold in folds
            ]
            self._series[pair] = concatenated(parts) if parts else None
        return self._series[pair]

    def test_hours(self, pair: str) -> int:
        """Hours of test windows `pair` got (the unchanged closes included)."""
        return int(self.plan["test_size"]) * len(self.windows(pair))


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
    if "rows" not in document:
        raise ReportError(
            f"{path} was written before reports kept their rows (the pooled test and the "
            "choice need them): run `tbml evaluate` again"
        )
    rows = dict(record_rows(record) for record in document["rows"])
    for (pair, fold, seed), each in rows.items():
        if each.times.size != each.y.size:
            raise ReportError(
                f"{path}: {pair} fold {fold} seed {seed} has {each.y.size} rows but "
                f"{each.times.size} candle times"
            )
    missing = [(r.pair, r.fold, r.seed) for r in reports if r.fold != "all"]
    missing = [key for key in missing if key not in rows]
    if missing:
        raise ReportError(f"{path}: no rows for {missing[0]} (and {len(missing) - 1} more)")
    return ArchitectureReport(
        path=path,
        model_type=report_label(
            str(document["plan"]["model_type"]), document["plan"].get("feature_set")
        ),
        plan=document["plan"],
        complete=bool(document.get("complete", False)),
        elapsed_seconds=float(document.get("elapsed_seconds") or 0.0),
        reports=reports,
        summaries=summaries,
        rows=rows,
        document=document,
    )


# --- paired comparisons, per pair and pooled over pairs ----------------------------------------


@dataclass(frozen=True)
class Forecaster:
    """A report's model, or one of the baselines fitted in its folds."""

    report: ArchitectureReport
    predictor: str = MODEL

    @property
    def name(self) -> str:
        """The model type, or the baseline's name marked as one (a model type may share it)."""
        return self.report.model_type if self.predictor == MODEL else f"{self.predictor} (baseline)"


def _seconds(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())


def _within(times: np.ndarray, windows: list[Window]) -> np.ndarray:
    keep = np.zeros(times.size, dtype=bool)
    for start, end in windows:
        keep |= (times >= _seconds(start)) & (times <= _seconds(end))
    return keep


def differences(
    first: Forecaster, second: Forecaster, pair: str, *, windows: list[Window] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Candle times and per-row log loss of `first` minus `second` on the rows of `pair` both
    have (within `windows` when given), in time order; None when they share none.

    Raises:
        ReportError: two reports whose outcomes differ at the same candle time.
    """
    a, b = first.report.series(pair), second.report.series(pair)
    if a is None or b is None:
        return None
    times, i, j = np.intersect1d(a.times, b.times, assume_unique=True, return_indices=True)
    if not np.array_equal(a.y[i], b.y[j]):
        raise ReportError(
            f"{pair}: {first.report.path} and {second.report.path} give different outcomes for "
            "the same candles (another horizon or other candles?)"
        )
    d = log_losses(a.probas[first.predictor][i], a.y[i]) - log_losses(
        b.probas[second.predictor][j], b.y[j]
    )
    if windows is not None:
        keep = _within(times, windows)
        times, d = times[keep], d[keep]
    return (times, d) if times.size else None


def pooled_over_pairs(
    per_pair: dict[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Per candle time, the mean of the pairs' values at that time (a pair without it does not
    count), in time order."""
    times = np.concatenate([t for t, _ in per_pair.values()])
    values = np.concatenate([v for _, v in per_pair.values()])
    hours, at = np.unique(times, return_inverse=True)
    return hours, np.bincount(at, weights=values) / np.bincount(at)


@dataclass(frozen=True)
class Compared:
    """`first` minus `second`, per-row log loss: per pair, and pooled over the pairs."""

    first: str
    second: str
    per_pair: dict[str, PairedVerdict]
    pooled: PairedVerdict | None


def compare(
    first: Forecaster,
    second: Forecaster,
    pairs: list[str],
    *,
    windows: dict[str, list[Window]] | None = None,
) -> Compared:
    """The paired interval of `first` minus `second` on each pair, and on the hourly series
    pooled over the pairs (`pooled_over_pairs`); `windows` limits each pair's rows."""
    found = {
        pair: d
        for pair in pairs
        if (
            d := differences(
                first, second, pair, windows=None if windows is None else windows[pair]
            )
        )
        is not None
    }
    return Compared(
        first=first.name,
        second=second.name,
        per_pair={pair: paired_interval(d) for pair, (_, d) in found.items()},
        pooled=paired_interval(pooled_over_pairs(found)[1]) if found else None,
    )


# --- choose on the earlier folds, confirm on the newest ----------------------------------------


def split_windows(
    architectures: list[ArchitectureReport], pair: str, *, confirm_folds: int
) -> tuple[list[Window], list[Window]]:
    """`pair`'s test windows over every report, oldest first: (choosing, confirming), the
    confirming being the newest `confirm_folds`."""
    windows = sorted(
        {w for a in architectures for w in a.windows(pair)}, key=lambda w: (w[1], w[0])
    )
    cut = max(0, len(windows) - confirm_folds)
    return windows[:cut], windows[cut:]


def _fold_words(architectures: list[ArchitectureReport], pair: str, windows: list[Window]) -> str:
    if not windows:
        return "none"
    labels = {}
    for a in reversed(architectures):
        labels.update(a.windows(pair))
    numbers = span([int(labels[w]) for w in windows])
    return f"fold{'' if len(windows) == 1 else 's'} {numbers}"


@dataclass(frozen=True)
class Selection:
    """The rule applied to one pair (or to the pairs pooled): the choice and its confirmation."""

    scope: str  # a pair, or POOLED
    chosen: str | None
    losses: dict[str, float]  # model type -> mean log loss on the shared choosing rows
    choosing: str  # the choosing folds, in words
    confirming: str
    hours: int  # shared choosing rows (hours, pooled)
    confirmation: dict[str, PairedVerdict]  # baseline -> chosen minus it, confirming rows only
    all_folds: dict[str, PairedVerdict]  # baseline -> chosen minus it, every fold

    @property
    def confirmed(self) -> bool:
        """The chosen type's interval against logistic regression, confirming rows only, lies
        wholly below zero."""
        verdict = self.confirmation.get(REFERENCE)
        return verdict is not None and verdict.high < 0


def _choosing_losses(
    a: ArchitectureReport, pair: str, windows: list[Window]
) -> tuple[np.ndarray, np.ndarray] | None:
    rows = a.series(pair)
    if rows is None:
        return None
    keep = _within(rows.times, windows)
    if not keep.any():
        return None
    return rows.times[keep], log_losses(rows.probas[MODEL][keep], rows.y[keep])


def _baselines(a: ArchitectureReport) -> list[str]:
    first = next(iter(a.rows.values()))
    return [name for name in first.probas if name != MODEL]


def _against_baselines(
    chosen: ArchitectureReport, pairs: list[str], windows: dict[str, list[Window]] | None
) -> dict[str, Compared]:
    return {
        name: compare(Forecaster(chosen), Forecaster(chosen, name), pairs, windows=windows)
        for name in _baselines(chosen)
    }


def select(
    architectures: list[ArchitectureReport],
    pairs: list[str],
    *,
    confirm_folds: int = CONFIRM_FOLDS,
) -> dict[str, Selection]:
    """`RULE` per pair of `pairs` and pooled over them (key `POOLED`)."""
    split = {p: split_windows(architectures, p, confirm_folds=confirm_folds) for p in pairs}
    choosing = {p: split[p][0] for p in pairs}
    confirming = {p: split[p][1] for p in pairs}
    losses = {
        (a.model_type, p): found
        for a in architectures
        for p in pairs
        if (found := _choosing_losses(a, p, choosing[p])) is not None
    }
    by_type = {a.model_type: a for a in architectures}
    out: dict[str, Selection] = {}
    for scope in [*pairs, POOLED]:
        scope_pairs = pairs if scope == POOLED else [scope]
        # Pooled, a candidate needs choosing rows on every pair that has any.
        covered = [p for p in scope_pairs if any(key[1] == p for key in losses)]
        candidates = [
            a.model_type
            for a in architectures
            if covered and all((a.model_type, p) in losses for p in covered)
        ]
        shared = {
            p: reduce(np.intersect1d, [losses[(t, p)][0] for t in candidates]) for p in covered
        }
        means: dict[str, float] = {}
        hours = 0
        for t in candidates:
            per_pair = {
                p: (shared[p], losses[(t, p)][1][np.isin(losses[(t, p)][0], shared[p])])
                for p in covered
                if shared[p].size
            }
            if per_pair:
                hourly = pooled_over_pairs(per_pair)[1]
                means[t], hours = float(hourly.mean()), int(hourly.size)
        chosen = min(means, key=lambda t: means[t]) if means else None
        if scope == POOLED:
            choosing_words = confirming_words = "per pair, as above"
        else:
            choosing_words = _fold_words(architectures, scope, choosing[scope])
            confirming_words = _fold_words(architectures, scope, confirming[scope])
        confirmation: dict[str, PairedVerdict] = {}
        all_folds: dict[str, PairedVerdict] = {}
        if chosen is not None:
            key = POOLED if scope == POOLED else scope
            for name, c in _against_baselines(by_type[chosen], scope_pairs, confirming).items():
                verdict = c.pooled if scope == POOLED else c.per_pair.get(key)
                if verdict is not None:
                    confirmation[name] = verdict
            for name, c in _against_baselines(by_type[chosen], scope_pairs, None).items():
                verdict = c.pooled if scope == POOLED else c.per_pair.get(key)
                if verdict is not None:
                    all_folds[name] = verdict
        out[scope] = Selection(
            scope=scope,
            chosen=chosen,
            losses=means,
            choosing=choosing_words,
            confirming=confirming_words,
            hours=hours,
            confirmation=confirmation,
            all_folds=all_folds,
        )
    return out


def served_type(selection: Selection, served: str | None) -> str | None:
    """What a pair serves: `served` when given, else the confirmed choice (None: HOLD)."""
    if served is not None:
        return served
    return selection.chosen if selection.confirmed else None


# --- the page ----------------------------------------------------------------------------------


def _nats(verdict: PairedVerdict) -> str:
    return f"{verdict.mean:+.4f} [{verdict.low:+.4f}, {verdict.high:+.4f}]"


def served_sentence(
    pair: str,
    selection: Selection,
    architectures: list[ArchitectureReport],
    *,
    served: str | None,
) -> str:
    """A plain sentence: what `pair` serves by default, and by how much it beats each baseline
    over every fold, or that it does not."""
    name = served_type(selection, served)
    if name is None:
        if selection.chosen is None:
            return f"**{pair}** serves nothing (HOLD): no model type has rows on a choosing fold."
        against = selection.confirmation.get(REFERENCE)
        words = (
            f"its log loss minus {REFERENCE}'s on {selection.confirming} is {_nats(against)} "
            "nats per hour, not wholly below zero"
            if against is not None
            else f"it has no row on the confirming {selection.confirming}"
        )
        return (
            f"**{pair}** serves nothing by default (HOLD): {selection.chosen} was chosen on "
            f"{selection.choosing}, but {words}."
        )
    why = (
        f"as `--served {served}` asks"
        if served is not None
        else f"chosen on {selection.choosing}, confirmed on {selection.confirming}"
    )
    report = next(a for a in architectures if a.model_type == name)
    if report.series(pair) is None:
        return f"**{pair}** would serve {name} ({why}), but {name} was not evaluated on {pair}."
    verdicts = {
        b: c.per_pair[pair]
        for b, c in _against_baselines(report, [pair], None).items()
        if pair in c.per_pair
    }
    beaten = [
        f"{b}'s by {-v.mean:.4f} nats per hour (95 % interval {-v.high:.4f} to {-v.low:.4f})"
        for b, v in verdicts.items()
        if v.high < 0
    ]
    unbeaten = [f"{b} ({_nats(v)})" for b, v in verdicts.items() if v.high >= 0]
    series = report.series(pair)
    rows = 0 if series is None else int(series.y.size)
    text = (
        f"**{pair}** serves {name} by default ({why}). Over its {len(report.windows(pair))} "
        f"folds ({report.test_hours(pair):,} test hours, {rows:,} scored)"
    )
    if beaten:
        text += f" its log loss is below {'; '.join(beaten)}"
    if unbeaten:
        text += (
            f"{';' if beaten else ''} it does not beat {', '.join(unbeaten)}, model minus "
            "baseline, nats per hour"
        )
    return text + "."


def selection_table(
    selections: dict[str, Selection], architectures: list[ArchitectureReport]
) -> str:
    """Per pair and pooled: the choosing folds and each type's log loss there, the choice, and
    its difference from every baseline on the confirming folds and on every fold."""
    types = [a.model_type for a in architectures]
    baselines = list(dict.fromkeys(b for a in architectures for b in _baselines(a)))
    lines = [
        "| pair | choosing folds | shared choosing hours | "
        + " | ".join(f"{t} log loss" for t in types)
        + f" | chosen | confirming folds | chosen - {REFERENCE}, confirming (95 %) | wholly "
        "below zero | "
        + " | ".join(f"chosen - {b}, confirming" for b in baselines if b != REFERENCE)
        + f" | chosen - {REFERENCE}, every fold |",
        "|---|---|---:|"
        + "---|" * len(types)
        + "---|---|---|---|"
        + "---|" * (len(baselines) - 1)
        + "---|",
    ]
    for scope, s in selections.items():
        cells = [f"{s.losses[t]:.4f}" if t in s.losses else "—" for t in types]
        ref = s.confirmation.get(REFERENCE)
        others = [
            _nats(s.confirmation[b]) if b in s.confirmation else "—"
            for b in baselines
            if b != REFERENCE
        ]
        every = s.all_folds.get(REFERENCE)
        lines.append(
            f"| {scope} | {s.choosing} | {s.hours:,} | "
            + " | ".join(cells)
            + f" | {s.chosen or '—'} | {s.confirming} | {_nats(ref) if ref else '—'} | "
            + ("yes" if s.confirmed else "no")
            + " | "
            + " | ".join(others)
            + f" | {_nats(every) if every else '—'} |"
        )
    return "\n".join(lines)


def comparisons(architectures: list[ArchitectureReport], pairs: list[str]) -> list[Compared]:
    """Each model type against each baseline of its report, then each type against each later
    one, on every fold."""
    out = [c for a in architectures for c in _against_baselines(a, pairs, None).values()]
    for i, a in enumerate(architectures):
        for b in architectures[i + 1 :]:
            out.append(compare(Forecaster(a), Forecaster(b), pairs))
    return out


def pooled_table(compared: list[Compared], pairs: list[str]) -> str:
    """One row per comparison: pooled over the pairs, and each pair alone."""
    lines = [
        "| first - second | pooled over pairs (95 %) | hours | "
        + " | ".join(f"{p} (95 %)" for p in pairs)
        + " |",
        "|---|---|---:|" + "---|" * len(pairs),
    ]
    for c in compared:
        if c.pooled is None:
            continue
        cells = [_nats(c.per_pair[p]) if p in c.per_pair else "—" for p in pairs]
        lines.append(
            f"| {c.first} - {c.second} | {_nats(c.pooled)} | {c.pooled.rows:,} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def hours_table(architectures: list[ArchitectureReport], pairs: list[str]) -> str:
    """Per model type and pair: the test hours (folds x test size) and the rows scored."""
    lines = [
        "| model type | " + " | ".join(pairs) + " |",
        "|---|" + "---:|" * len(pairs),
    ]
    for a in architectures:
        cells = []
        for p in pairs:
            series = a.series(p)
            cells.append(
                "—"
                if series is None
                else f"{a.test_hours(p):,} ({_folds(len(a.windows(p)))}; {series.y.size:,} scored)"
            )
        lines.append(f"| {a.model_type} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _command(a: ArchitectureReport) -> str:
    plan = a.plan
    pairs = plan["pairs"]
    target = pairs[0] if len(pairs) == 1 else "--all"
    features = plan.get("feature_set") or DEFAULT_SET
    command = (
        f"tbml evaluate {target} --model-type {plan['model_type']} --folds {plan['folds']} "
        f"--test-size {plan['test_size']} --epochs {plan['epochs']} "
        f"--seeds {','.join(map(str, plan['seeds']))}"
    )
    if plan["max_rows"]:
        command += f" --max-rows {plan['max_rows']}"
    # Named whenever it is not what the command would choose by itself (the type's evaluated
    # set, or the default).
    if features != DEFAULT_SET or plan["model_type"] in EVALUATED_FEATURE_SETS:
        command += f" --feature-set {features}"
    return command


# Every figure of the page: four decimals (accuracy in %, one).
_shown = partial(figure, digits=4)
_sd = partial(seed_sd, digits=4)


def _pair_table(architectures: list[ArchitectureReport], pair: str) -> list[str]:
    lines = [
        "| model type | seeds | folds | log loss, newest window | log loss sd over seeds, "
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
            f"{s.rows} rows; fitted on the same training rows as the first model type above, "
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


def headline_table(
    architectures: list[ArchitectureReport], pairs: list[str], served: dict[str, str | None]
) -> str:
    """Per pair: what is served, and the lowest-loss model type on the newest window beside the
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
        lines.append(
            f"| {pair} | {served.get(pair) or 'nothing (HOLD)'} | {a.model_type} "
            f"{_shown(newest, MODEL, 'log_loss', interval=False)} (sd "
            f"{_sd(newest, MODEL, 'log_loss')}) | "
            f"{rival} {newest.metrics[rival]['log_loss']:.4f} | "
            f"{strongest}: {difference(pooled.verdicts[strongest])} | "
            f"{'yes' if pooled.beats_baseline else 'no'} |"
        )
    return "\n".join(lines)


def _made_line(a: ArchitectureReport) -> str:
    plan = a.plan
    finished = a.finished()
    if a.complete:
        state = "complete"
    elif a.document.get("stopped") == "budget":
        state = (
            f"**incomplete**: stopped when its budget of {plan['budget_minutes']:g} min was "
            f"spent; it got {folds_got_text(a.document)}"
        )
    else:
        state = (
            f"**incomplete** (interrupted or still running): it got {folds_got_text(a.document)}"
        )
    return (
        f"- **{a.model_type}**: `{_command(a)}`; pairs {', '.join(plan['pairs'])}; "
        f"{plan['folds']} fold{'' if plan['folds'] == 1 else 's'} of {plan['test_size']:,} "
        "hourly test rows, the last ending at the newest candle; "
        + (
            f"at most {plan['epochs']} epochs (patience {plan['patience']}); "
            if plan["model_type"] in NETWORK_TYPES
            else "boosting early-stopped on the validation rows; "
        )
        + f"seeds {', '.join(map(str, plan['seeds']))}"
        + (f"; newest {plan['max_rows']:,} candles only" if plan["max_rows"] else "")
        + f"; {a.elapsed_seconds / 60:.1f} min; {len(finished)} pair x seed walk-forwards; "
        f"{state}. {calibration_line(a.reports)}"
    )


def combine_reports(
    paths: list[Path],
    *,
    notes: list[str] | None = None,
    sections: list[str] | None = None,
    served: str | None = None,
    confirm_folds: int = CONFIRM_FOLDS,
) -> str:
    """The page: what each pair serves and why, the choice and its confirmation, the pooled
    test, the markdown `sections` as given, each pair's model types side by side, then every
    type's folds. `served`: the type every pair serves (default: each pair's confirmed choice).

    Raises:
        ReportError: a path that is not a report, two reports of one model type, a `served`
            type no report has, or `confirm_folds` below 1.
    """
    if confirm_folds < 1:
        raise ReportError(f"confirm_folds must be at least 1, got {confirm_folds}")
    architectures = [load_report(path) for path in paths]
    seen: dict[str, Path] = {}
    for a in architectures:
        if a.model_type in seen:
            raise ReportError(
                f"two reports of {a.model_type}: {seen[a.model_type]} and {a.path}; "
                "give one per model type"
            )
        seen[a.model_type] = a.path
    if served is not None and served not in seen:
        raise ReportError(
            f"--served {served}: no report of it; the reports are of {', '.join(seen)}"
        )
    pairs: list[str] = []
    for a in architectures:
        pairs += [p for p in a.plan["pairs"] if p not in pairs]
    selections = select(architectures, pairs, confirm_folds=confirm_folds)
    serving = {p: served_type(selections[p], served) for p in pairs}
    metric = "log_loss"
    lines = [
        "# Walk-forward evaluation: every model type",
        "",
        "Generated by `tbml evaluate --combine` from the JSON reports of `tbml evaluate`, one "
        "per model type; every number below comes from them.",
        "",
        "## How it was made",
        "",
        *(_made_line(a) for a in architectures),
        *(f"- {note}" for note in notes or []),
        "",
        "Test hours per pair (folds x test size; the rows scored leave out the unchanged closes):",
        "",
        hours_table(architectures, pairs),
        "",
        "## What each pair serves",
        "",
        f"The rule, fixed in advance (confirm_folds = {confirm_folds}): {RULE}"
        + (f" Here every pair is made to serve {served} (`--served {served}`)." if served else ""),
        "",
        *(f"- {served_sentence(p, selections[p], architectures, served=served)}" for p in pairs),
        "",
        "## Chosen on the earlier folds, confirmed on the newest",
        "",
        "Log losses are of the seed ensembles on the choosing rows all candidates share (pooled: "
        "per hour, the mean over the pairs). `chosen - X`: the chosen type's per-row log loss "
        "minus X's on the same rows, mean [95 % paired interval], nats per hour; the confirming "
        "folds never entered the choice.",
        "",
        selection_table(selections, architectures),
        "",
        "## Pooled over pairs",
        "",
        "Each test hour's log-loss difference averaged over the pairs that have that hour, then "
        "one paired interval over the hourly series in time order (the pairs of one hour are "
        "one observation); beside it, each pair alone. Every fold; seed ensembles; a type "
        "against a type on the candles both have.",
        "",
        pooled_table(comparisons(architectures, pairs), pairs),
        "",
        "## The lowest log loss on the newest window",
        "",
        headline_table(architectures, pairs, serving),
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


def _folds(count: int) -> str:
    return f"{count} fold{'' if count == 1 else 's'}"
