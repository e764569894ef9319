"""What a walk-forward report holds, and how its seeds are summarised.

A fold report (`FoldReport`) is one test window under one seed: every predictor's metrics and
intervals on the same rows, and the model's paired verdict on each baseline. Its rows
(`FoldRows`: outcomes, each predictor's probability of "up", candle times) are kept in the JSON
report as compact strings (`rows_record`), probabilities to `DIGITS` significant digits, so that
a resumed report and an uninterrupted one agree exactly. Fold `all` pools a seed's folds
(`pooled_report`); `summarise` ensembles the seeds per pair and fold (`SeedSummary`), and
`fold_reports` and `summaries_of` read both back from a JSON report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlproject.baselines import BASELINES, Prediction
from mlproject.metrics import classification_metrics, metric_intervals
from mlproject.scoring import MODEL, Scores, VerdictRule, judge, score
from pipelines.settings import Settings

PREDICTORS: tuple[str, ...] = (MODEL, *BASELINES)

# Probabilities are kept in the JSON report with this many significant digits (a log-loss change
# below 1e-6 nats per row), so that a resumed report and an uninterrupted one agree exactly.
DIGITS = 7

Key = tuple[str, str, int]  # (pair, fold, seed)


@dataclass(frozen=True)
class FoldReport:
    """One test window: every predictor's metrics and intervals on the same rows."""

    pair: str
    fold: str
    test_start: str
    test_end: str
    rows: int
    metrics: dict[str, dict[str, float]]
    intervals: dict[str, dict[str, tuple[float, float]]]
    strongest_baseline: str
    beats_baseline: bool
    # Model minus each baseline, log loss per row: `PairedVerdict.to_dict()`.
    verdicts: dict[str, dict[str, float | int | str]] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)  # `VerdictRule.to_dict()`
    seed: int = 42
    epochs_run: int = 0
    best_epoch: int = 0
    fit_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _no_times() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class FoldRows:
    """One test window's rows under one seed, in time order: the outcomes, every predictor's
    probability of "up" and each row's candle time (Unix seconds; empty where unknown)."""

    y: np.ndarray
    probas: dict[str, np.ndarray]
    times: np.ndarray = field(default_factory=_no_times)


def rows_record(key: Key, rows: FoldRows) -> dict[str, Any]:
    """One fold's rows as the JSON report keeps them: compact strings, one line each."""
    pair, fold, seed = key
    return {
        "pair": pair,
        "fold": fold,
        "seed": seed,
        "times": " ".join(map(str, np.asarray(rows.times, dtype=np.int64).tolist())),
        "y": "".join("1" if v else "0" for v in np.asarray(rows.y).tolist()),
        "proba": {
            name: " ".join(f"{v:.{DIGITS}g}" for v in np.asarray(p, dtype=np.float64).tolist())
            for name, p in rows.probas.items()
        },
    }


def record_rows(record: dict[str, Any]) -> tuple[Key, FoldRows]:
    """The key and rows of a `rows_record`."""
    key = (str(record["pair"]), str(record["fold"]), int(record["seed"]))
    rows = FoldRows(
        y=np.array([c == "1" for c in record["y"]], dtype=np.int8),
        probas={
            name: np.array(text.split(), dtype=np.float64) for name, text in record["proba"].items()
        },
        times=np.array(record["times"].split(), dtype=np.int64),
    )
    return key, rows


def kept(key: Key, rows: FoldRows) -> FoldRows:
    """`rows` as the report keeps them (probabilities to `DIGITS` significant digits)."""
    return record_rows(rows_record(key, rows))[1]


def concatenated(parts: list[FoldRows]) -> FoldRows:
    """Several windows' rows, one after another."""
    names = list(parts[0].probas)
    return FoldRows(
        y=np.concatenate([p.y for p in parts]),
        probas={name: np.concatenate([p.probas[name] for p in parts]) for name in names},
        times=np.concatenate([np.asarray(p.times, dtype=np.int64) for p in parts]),
    )


def fold_report(
    pair: str, fold: str, scores: Scores, *, start: str, end: str, seed: int
) -> FoldReport:
    """One seed's report of a test window from its scores."""
    y = scores.y
    return FoldReport(
        pair=pair,
        fold=fold,
        test_start=start,
        test_end=end,
        rows=int(y.size),
        metrics=scores.metrics,
        intervals={
            name: metric_intervals(y_true=y, proba=p.proba, pred=p.pred)
            for name, p in scores.predictions.items()
        },
        strongest_baseline=scores.strongest_baseline,
        beats_baseline=scores.beats_baseline,
        verdicts={name: v.to_dict() for name, v in scores.judgement.verdicts.items()},
        rule=scores.rule.to_dict(),
        seed=seed,
    )


def pooled_report(
    pair: str,
    seed: int,
    folds: list[FoldReport],
    rows: list[FoldRows],
    *,
    settings: Settings,
    required: tuple[str, ...] | None = None,
) -> FoldReport:
    """Fold `all` of one pair and seed: its folds' rows (in time order) scored as one window
    (`required`: the baselines it must beat, default all)."""
    together = concatenated(rows)
    predictions = {
        name: Prediction(proba=proba, pred=(proba >= 0.5).astype(np.int8))
        for name, proba in together.probas.items()
    }
    scores = score(
        y=together.y,
        model_proba=predictions[MODEL].proba,
        baseline_predictions={k: v for k, v in predictions.items() if k != MODEL},
        returns=np.zeros(together.y.size),
        settings=settings,
        required=required,
    )
    return fold_report(
        pair, "all", scores, start=folds[0].test_start, end=folds[-1].test_end, seed=seed
    )


@dataclass(frozen=True)
class SeedSummary:
    """One pair and fold over every seed: the seed ensemble judged once, and the seeds' spread.

    The ensemble's probability of "up" is each predictor's probability averaged over the seeds,
    row by row; its metrics, intervals and paired verdicts are computed on those averages.
    """

    pair: str
    fold: str
    test_start: str
    test_end: str
    rows: int
    seeds: tuple[int, ...]
    metrics: dict[str, dict[str, float]]  # the ensemble's: predictor -> metric -> value
    intervals: dict[str, dict[str, tuple[float, float]]]  # the ensemble's (`metric_intervals`)
    # The ensemble's model minus each baseline, log loss per row: `PairedVerdict.to_dict()`.
    verdicts: dict[str, dict[str, float | int | str]]
    strongest_baseline: str  # the baseline of lowest ensemble log loss
    beats_baseline: bool  # every interval of `verdicts` lies wholly below -margin
    margin: float
    # The spread of the seeds taken one by one: each metric's mean and sample standard deviation
    # (n - 1; NaN for one seed) over the seeds' own reports.
    seed_mean: dict[str, dict[str, float]]
    seed_sd: dict[str, dict[str, float]]
    # Per baseline, how many seeds' own intervals lie wholly below -margin ("better") or above
    # +margin ("worse"); and on how many seeds the model alone beats every baseline.
    seed_verdicts: dict[str, dict[str, int]]
    beats_seeds: int

    @property
    def n(self) -> int:
        return len(self.seeds)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def ensemble(rows: list[FoldRows]) -> FoldRows:
    """The seeds' rows of one test window averaged row by row, per predictor.

    A predictor whose probabilities every seed gives alike (a deterministic baseline) keeps them
    as they are.

    Raises:
        ValueError: when the seeds' outcomes or predictors differ (not the same rows).
    """
    if not rows:
        raise ValueError("an ensemble needs the rows of at least one seed")
    first = rows[0]
    for other in rows[1:]:
        if not np.array_equal(other.y, first.y):
            raise ValueError(
                f"the seeds' outcomes differ ({other.y.size} and {first.y.size} rows): an "
                "ensemble averages one window's rows"
            )
        if set(other.probas) != set(first.probas):
            raise ValueError(
                f"the seeds' predictors differ: {sorted(other.probas)} and {sorted(first.probas)}"
            )
        if other.times.size and first.times.size and not np.array_equal(other.times, first.times):
            raise ValueError(
                "the seeds' candle times differ: an ensemble averages one window's rows"
            )
    probas = {}
    for name in first.probas:
        each = [np.asarray(r.probas[name], dtype=np.float64) for r in rows]
        same = all(np.array_equal(p, each[0]) for p in each[1:])
        probas[name] = each[0] if same else np.mean(np.stack(each), axis=0)
    return FoldRows(y=first.y, probas=probas, times=first.times)


def _seed_group_rows(
    pair: str, fold: str, group: list[FoldReport], rows: dict[Key, FoldRows]
) -> FoldRows:
    """The seed ensemble of one pair and fold, after checking its seeds saw the same rows."""
    first = group[0]
    seeds = tuple(r.seed for r in group)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{pair} fold {fold}: seed reported twice in {seeds}")
    for other in group[1:]:
        if (other.test_start, other.test_end, other.rows) != (
            first.test_start,
            first.test_end,
            first.rows,
        ):
            raise ValueError(
                f"{pair} fold {fold}: seed {other.seed} tested {other.test_start} .. "
                f"{other.test_end} ({other.rows} rows), seed {first.seed} "
                f"{first.test_start} .. {first.test_end} ({first.rows} rows)"
            )
    missing = [seed for seed in seeds if (pair, fold, seed) not in rows]
    if missing:
        raise ValueError(f"{pair} fold {fold}: no rows of seeds {missing}")
    return ensemble([rows[(pair, fold, seed)] for seed in seeds])


def summarise(
    reports: list[FoldReport],
    rows: dict[Key, FoldRows],
    *,
    required: tuple[str, ...] | None = None,
) -> list[SeedSummary]:
    """Group per-seed fold reports by (pair, fold), in their order; judge each group's seed
    ensemble (from `rows`, keyed by pair, fold and seed; against the `required` baselines,
    default all) and give the seeds' spread.

    Fold `all` is each fold's seed ensemble, the folds one after another: a fold that fewer
    seeds reached (a run its budget stopped) counts with the seeds it has.

    Raises:
        ValueError: when one pair and fold was tested on different rows under different seeds,
            one seed appears twice for it, or a report's rows are missing.
    """
    groups: dict[tuple[str, str], list[FoldReport]] = {}
    for report in reports:
        groups.setdefault((report.pair, report.fold), []).append(report)
    ensembles = {
        (pair, fold): _seed_group_rows(pair, fold, group, rows)
        for (pair, fold), group in groups.items()
        if fold != "all"
    }
    summaries = []
    for (pair, fold), group in groups.items():
        first = group[0]
        seeds = tuple(r.seed for r in group)
        folds = sorted(
            (groups[key][0].test_start, groups[key][0].test_end, key)
            for key in ensembles
            if key[0] == pair
        )
        if fold != "all":
            together, start, end = ensembles[(pair, fold)], first.test_start, first.test_end
        elif folds:
            together = concatenated([ensembles[key] for _, _, key in folds])
            start, end = folds[0][0], folds[-1][1]
        else:
            together = _seed_group_rows(pair, fold, group, rows)
            start, end = first.test_start, first.test_end
        rule = VerdictRule.from_dict(first.rule) if first.rule else VerdictRule(margin=0.0)
        judgement = judge(together.y, together.probas, rule=rule, required=required)
        seed_mean: dict[str, dict[str, float]] = {}
        seed_sd: dict[str, dict[str, float]] = {}
        for name, metrics in first.metrics.items():
            seed_mean[name], seed_sd[name] = {}, {}
            for metric in metrics:
                seed_mean[name][metric], seed_sd[name][metric] = _mean_sd(
                    [float(r.metrics[name][metric]) for r in group]
                )
        seed_verdicts = {
            name: {
                "better": sum(float(r.verdicts[name]["high"]) < -rule.margin for r in group),
                "worse": sum(float(r.verdicts[name]["low"]) > rule.margin for r in group),
            }
            for name in first.verdicts
        }
        summaries.append(
            SeedSummary(
                pair=pair,
                fold=fold,
                test_start=start,
                test_end=end,
                rows=int(together.y.size),
                seeds=seeds,
                metrics={
                    name: classification_metrics(y_true=together.y, proba=proba)
                    for name, proba in together.probas.items()
                },
                intervals={
                    name: metric_intervals(y_true=together.y, proba=proba)
                    for name, proba in together.probas.items()
                },
                verdicts={name: v.to_dict() for name, v in judgement.verdicts.items()},
                strongest_baseline=judgement.strongest_baseline,
                beats_baseline=judgement.beats_baseline,
                margin=rule.margin,
                seed_mean=seed_mean,
                seed_sd=seed_sd,
                seed_verdicts=seed_verdicts,
                beats_seeds=sum(r.beats_baseline for r in group),
            )
        )
    return summaries


def fold_reports(document: dict[str, Any]) -> list[FoldReport]:
    """The per-seed fold reports of a JSON report (`report_document`), as written."""

    def restore(data: dict[str, Any]) -> FoldReport:
        values = dict(data)
        values["metrics"] = {
            name: {k: math.nan if v is None else float(v) for k, v in metrics.items()}
            for name, metrics in data["metrics"].items()
        }
        values["intervals"] = {
            name: {
                k: (
                    math.nan if v[0] is None else float(v[0]),
                    math.nan if v[1] is None else float(v[1]),
                )
                for k, v in intervals.items()
            }
            for name, intervals in data["intervals"].items()
        }
        return FoldReport(**values)

    return [restore(data) for data in document["folds"]]


def summaries_of(document: dict[str, Any]) -> list[SeedSummary]:
    """The seed summaries of a JSON report (`report_document`), as written.

    Raises:
        ValueError: a report written before the seeds were ensembled.
    """
    summaries = document.get("summary") or []
    if any("seed_sd" not in data for data in summaries):
        raise ValueError(
            "the report was written before seeds were ensembled (its summary averages the "
            "seeds' intervals): run `tbml evaluate` again"
        )
    return [
        SeedSummary(
            **{
                **data,
                "seeds": tuple(data["seeds"]),
                "metrics": _floats(data["metrics"]),
                "intervals": {
                    name: {k: (_float(v[0]), _float(v[1])) for k, v in each.items()}
                    for name, each in data["intervals"].items()
                },
                "verdicts": {
                    name: {k: _float(v) if v is None else v for k, v in each.items()}
                    for name, each in data["verdicts"].items()
                },
                "seed_mean": _floats(data["seed_mean"]),
                "seed_sd": _floats(data["seed_sd"]),
            }
        )
        for data in summaries
    ]


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _floats(table: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float]]:
    return {name: {k: _float(v) for k, v in each.items()} for name, each in table.items()}
