"""Walk-forward evaluation: k expanding folds per pair, the model against every baseline.

Fold i trains on everything before its test window (less the purge gaps and the validation part)
and tests on the next `test_size` samples; the last fold's window ends at the newest candle.
Each fold goes through the same `fit_and_score` as a training run (the training's epochs and
early stopping by default: what is evaluated is what is deployed), once per seed of the plan
(the model's initialisation, dropout and shuffling; the fitted baselines take the same seed, which
only LightGBM's column sampling uses). Intervals are the lifecycle's (`mlproject.metrics`):
Wilson for accuracy, a Newey-West t-interval of the mean per-row loss for log loss; ROC AUC is a
point estimate. `beats` is the training run's paired verdict (`mlproject.scoring.judge`): per-row
log-loss differences, model minus each baseline on the same rows, through `paired_interval`.
Fold `all` pools a seed's folds: the per-row differences of every fold, one interval.

Over several seeds, `summarise` ensembles them: per pair and fold, each predictor's probability
of "up" is averaged over the seeds row by row, and the ensemble is scored and judged once (one
paired interval against each baseline). The seeds' spread (mean and standard deviation of each
seed's own metrics, and how many seeds alone beat every baseline) is reported beside it.

The JSON report keeps every fold's rows (candle time, outcome, each predictor's probability) per
pair, fold and seed, and is rewritten after every fold: a run stopped by its time budget or killed
resumes where it was, fitting only the (pair, fold, seed) the report lacks.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from mlproject.baselines import BASELINES, Prediction
from mlproject.config import TrainConfig
from mlproject.data import Dataset, Split, decided_rows, walk_forward_splits
from mlproject.metrics import classification_metrics, metric_intervals
from mlproject.scoring import MODEL, Scores, VerdictRule, judge, required_baselines, score
from mlproject.tracking import active_run
from pipelines.features.params import DEFAULT_SET, FEATURE_SETS
from pipelines.lifecycle.scores import log_loss
from pipelines.pairs import check_pair
from pipelines.settings import NETWORK_TYPES, Settings

logger = logging.getLogger(__name__)

PREDICTORS: tuple[str, ...] = (MODEL, *BASELINES)

# At least this many folds by default: 6 x 2,000 test hours per pair, four pairs pooled, is what
# it takes for the paired interval to see an edge of about 0.001 nats per hour.
DEFAULT_FOLDS = 6
DEFAULT_BUDGET_MINUTES = 90.0
# What a (pair, fold, seed) in a report depends on besides the pair and the seed: a report is
# resumed only by a plan that agrees on all of these.
RESUME_FIELDS: tuple[str, ...] = (
    "model_type",
    "feature_set",
    "folds",
    "test_size",
    "epochs",
    "patience",
    "max_rows",
)
# Probabilities are kept in the JSON report with this many significant digits (a log-loss change
# below 1e-6 nats per row), so that a resumed report and an uninterrupted one agree exactly.
DIGITS = 7

Key = tuple[str, str, int]  # (pair, fold, seed)


class ResumeError(ValueError):
    """A report in the output folder that this evaluation cannot resume."""


@dataclass(frozen=True)
class EvaluationPlan:
    """What to evaluate and how long it may take (`budget_minutes`, 0 for no limit)."""

    pairs: tuple[str, ...]
    model_type: str = "lstm"
    # The features every fold computes (pipelines.features.spec.FEATURE_SETS).
    feature_set: str = DEFAULT_SET
    folds: int = DEFAULT_FOLDS
    test_size: int = 2000
    epochs: int = 100
    patience: int = 5
    seeds: tuple[int, ...] = (42,)
    max_rows: int = 0
    budget_minutes: float = DEFAULT_BUDGET_MINUTES

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("an evaluation needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must differ, got {','.join(map(str, self.seeds))}")
        if self.feature_set not in FEATURE_SETS:
            raise ValueError(
                f"unknown feature set {self.feature_set!r}: expected one of "
                f"{', '.join(FEATURE_SETS)}"
            )
        if not self.budget_minutes >= 0:
            raise ValueError(
                f"budget_minutes must be >= 0 (0: no limit), got {self.budget_minutes!r}"
            )

    @property
    def label(self) -> str:
        """The model type, and its feature set unless the default: `lightgbm`,
        `lightgbm-cross`; the report's name and its line on the evaluation page."""
        return report_label(self.model_type, self.feature_set)

    @property
    def seed(self) -> int:
        """The first seed (the only one of a one-seed plan)."""
        return self.seeds[0]

    def schedule(self) -> Iterator[Key]:
        """Every (pair, fold, seed) in the order they are fitted: seeds outermost, then folds
        newest first, then pairs, so a run its budget stops leaves every pair the same newest
        folds under the first seeds."""
        for seed in self.seeds:
            for number in range(self.folds, 0, -1):
                for pair in self.pairs:
                    yield pair, str(number), seed

    @classmethod
    def from_settings(
        cls, settings: Settings, *, pairs: list[str], **overrides: Any
    ) -> EvaluationPlan:
        """A plan with the defaults: at least `DEFAULT_FOLDS` folds (ML_WALK_FORWARD_FOLDS when
        larger) of ML_WALK_FORWARD_TEST_SIZE samples, the training's epochs and early-stopping
        patience (ML_EPOCHS, ML_EARLY_STOPPING_PATIENCE); `seed=` is a one-seed `seeds=`."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if "seed" in given:
            if "seeds" in given:
                raise ValueError("give seed or seeds, not both")
            given["seeds"] = (given.pop("seed"),)
        if "seeds" in given:
            given["seeds"] = tuple(int(s) for s in given["seeds"])
        return cls(
            pairs=tuple(check_pair(p, settings.pairs) for p in pairs),
            folds=given.pop("folds", max(settings.walk_forward_folds, DEFAULT_FOLDS)),
            test_size=given.pop("test_size", settings.walk_forward_test_size),
            epochs=given.pop("epochs", settings.epochs),
            patience=given.pop("patience", settings.early_stopping_patience),
            **given,
        )


def report_label(model_type: str, feature_set: str | None) -> str:
    """`lightgbm` for the default features, `lightgbm-cross` for another set."""
    if not feature_set or feature_set == DEFAULT_SET:
        return model_type
    return f"{model_type}-{feature_set}"


def parse_seeds(text: str) -> tuple[int, ...]:
    """`"42,43,44"` -> (42, 43, 44): whole numbers >= 0, comma-separated, each once."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or not all(part.isdigit() for part in parts):
        raise ValueError(
            f"invalid seeds {text!r}: give whole numbers >= 0 separated by commas, e.g. 42,43,44"
        )
    seeds = tuple(int(part) for part in parts)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"invalid seeds {text!r}: each seed may appear only once")
    return seeds


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


@dataclass(frozen=True)
class PairData:
    """A pair's dataset and its walk-forward splits (the same under every seed)."""

    dataset: Dataset
    splits: list[Split]

    def window(self, number: int) -> tuple[str, str]:
        """Fold `number`'s (1-based) first and last test candle, ISO 8601."""
        split, index = self.splits[number - 1], self.dataset.candles.index
        return index[split.test.start].isoformat(), index[split.test.stop - 1].isoformat()


def pair_data(pair: str, *, plan: EvaluationPlan, settings: Settings) -> PairData:
    """Load `pair`'s candles and features and cut the plan's folds."""
    from mlproject.train import load_dataset

    config = TrainConfig.from_settings(
        settings, pair=pair, model_type=plan.model_type, feature_set=plan.feature_set
    )
    dataset = load_dataset(config, settings=settings, max_rows=plan.max_rows)
    splits = walk_forward_splits(
        dataset,
        folds=plan.folds,
        test_size=plan.test_size,
        val_fraction=settings.validation_fraction,
    )
    return PairData(dataset=dataset, splits=splits)


def run_fold(
    key: Key, data: PairData, *, plan: EvaluationPlan, settings: Settings
) -> tuple[FoldReport, FoldRows]:
    """Fit and score one (pair, fold, seed): its report and its rows as the report keeps them."""
    # TensorFlow comes in with the fold, here and not on import: `--combine` never needs it.
    from mlproject.fold import fit_and_score

    pair, fold, seed = key
    config = TrainConfig.from_settings(
        settings,
        pair=pair,
        model_type=plan.model_type,
        feature_set=plan.feature_set,
        epochs=plan.epochs,
        seed=seed,
    )
    fold_settings = settings.model_copy(update={"early_stopping_patience": plan.patience})
    split = data.splits[int(fold) - 1]
    result = fit_and_score(data.dataset, split, config=config, settings=fold_settings)
    y = result.scores.y
    tested = decided_rows(data.dataset, split.test)
    if tested.size != y.size:
        raise ValueError(
            f"{pair} fold {fold}: {y.size} scored rows, but the test window has {tested.size} "
            "up-or-down rows: the rows' candle times cannot be told"
        )
    start, end = data.window(int(fold))
    report = replace(
        fold_report(pair, fold, result.scores, start=start, end=end, seed=seed),
        epochs_run=result.fit.epochs_run,
        best_epoch=result.fit.best_epoch,
        fit_seconds=result.fit.fit_seconds,
        extra=_calibration(result, y=y),
    )
    stamps = pd.DatetimeIndex(data.dataset.candles.index[tested])
    times = np.asarray(stamps.as_unit("s").asi8, dtype=np.int64)
    rows = FoldRows(
        y=y, probas={name: p.proba for name, p in result.scores.predictions.items()}, times=times
    )
    logger.info(
        "%s fold %s seed %d: model accuracy %.4f, log loss %.4f (%s: %.4f), %.0f s",
        pair,
        fold,
        seed,
        report.metrics[MODEL]["accuracy"],
        report.metrics[MODEL]["log_loss"],
        report.strongest_baseline,
        report.metrics[report.strongest_baseline]["log_loss"],
        report.fit_seconds,
    )
    return report, kept(key, rows)


def _calibration(result: object, *, y: np.ndarray) -> dict[str, Any]:
    """How the fold's test probabilities were calibrated, and the model's log loss before it
    (empty for a fold without calibration)."""
    calibration, raw = getattr(result, "calibration", None), getattr(result, "raw_proba", None)
    if calibration is None or raw is None:
        return {}
    return {
        "calibration": calibration.to_dict(),
        "raw_log_loss": log_loss(np.asarray(raw, dtype=np.float64), y),
    }


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


@dataclass
class Progress:
    """What an evaluation has finished: per (pair, fold, seed) its report and rows, and the time
    spent on it in earlier runs."""

    reports: dict[Key, FoldReport] = field(default_factory=dict)
    rows: dict[Key, FoldRows] = field(default_factory=dict)
    elapsed: float = 0.0
    pairs: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()

    def add(self, key: Key, report: FoldReport, rows: FoldRows) -> None:
        self.reports[key], self.rows[key] = report, rows

    def ordered(self, plan: EvaluationPlan, *, settings: Settings) -> list[FoldReport]:
        """Every finished fold report, seeds outermost, then pairs, folds oldest first, each
        pair and seed closed by its fold `all` (the folds it has, pooled)."""
        out: list[FoldReport] = []
        for seed in plan.seeds:
            for pair in plan.pairs:
                keys = [
                    (pair, str(n), seed)
                    for n in range(1, plan.folds + 1)
                    if (pair, str(n), seed) in self.reports
                ]
                if not keys:
                    continue
                folds = [self.reports[key] for key in keys]
                out += folds
                parts = [self.rows[key] for key in keys]
                out.append(
                    pooled_report(
                        pair,
                        seed,
                        folds,
                        parts,
                        settings=settings,
                        required=required_baselines(plan.model_type),
                    )
                )
        return out

    def got(self, plan: EvaluationPlan) -> dict[str, dict[str, list[int]]]:
        """Per pair, per fold it has, the seeds that reached it."""
        return {
            pair: {
                str(n): [s for s in plan.seeds if (pair, str(n), s) in self.reports]
                for n in range(1, plan.folds + 1)
                if any((pair, str(n), s) in self.reports for s in plan.seeds)
            }
            for pair in plan.pairs
        }


def load_progress(path: Path, *, plan: EvaluationPlan, settings: Settings) -> Progress:
    """What the JSON report at `path` has finished, when `plan` may resume it (nothing when there
    is no report).

    Raises:
        ResumeError: a report of another plan or model shape, or one without its rows.
    """
    if not path.exists():
        return Progress()
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeError(f"cannot resume from {path}: {exc}; pass --fresh to start over") from None
    fresh = "pass --fresh to start over, or write elsewhere with --output-dir"
    if "rows" not in document:
        raise ResumeError(
            f"{path} was written before reports kept their rows and cannot be resumed: {fresh}"
        )
    before = document["plan"]
    before = {"feature_set": DEFAULT_SET, **before}  # reports from before feature sets
    differ = [
        f"{name} {before.get(name)!r} (now {getattr(plan, name)!r})"
        for name in RESUME_FIELDS
        if before.get(name) != getattr(plan, name)
    ]
    shape = _model_shape(settings)
    differ += [
        f"model {name} {document['model'].get(name)!r} (now {value!r})"
        for name, value in shape.items()
        if document["model"].get(name) != value
    ]
    if differ:
        raise ResumeError(f"{path} is a report of another evaluation: {'; '.join(differ)}; {fresh}")
    reports = {(r.pair, r.fold, r.seed): r for r in fold_reports(document) if r.fold != "all"}
    rows = dict(record_rows(record) for record in document["rows"])
    progress = Progress(
        elapsed=float(document.get("elapsed_seconds") or 0.0),
        pairs=tuple(before["pairs"]),
        seeds=tuple(int(s) for s in before["seeds"]),
    )
    for key, report in reports.items():
        if key not in rows:
            raise ResumeError(f"{path}: {key[0]} fold {key[1]} seed {key[2]} has no rows; {fresh}")
        progress.add(key, report, rows[key])
    return progress


def _check_windows(pair: str, data: PairData, progress: Progress) -> None:
    """The report's folds of `pair` tested the windows the candles give now."""
    for (each, fold, seed), report in progress.reports.items():
        if each != pair or int(fold) > len(data.splits):
            continue
        now = data.window(int(fold))
        if (report.test_start, report.test_end) != now:
            raise ResumeError(
                f"{pair} fold {fold} seed {seed} of the report tested {report.test_start} .. "
                f"{report.test_end}, the candles now give {now[0]} .. {now[1]} (newer candles?): "
                "pass --fresh to start over, or write elsewhere with --output-dir"
            )


def _union(first: tuple[Any, ...], second: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys((*first, *second)))


def evaluate(
    plan: EvaluationPlan,
    *,
    settings: Settings,
    output_dir: Path,
    fresh: bool = False,
    on_fold: Callable[[FoldReport], None] | None = None,
) -> tuple[list[FoldReport], Path]:
    """Walk forward over every pair, fold and seed of `plan` (in `EvaluationPlan.schedule`
    order); write and log the report; return the per-seed fold reports and the report's path.

    The report (markdown and JSON) is rewritten after each fold, marked incomplete until the
    last. An existing report of the same evaluation in `output_dir` is resumed (unless `fresh`):
    its folds are kept, not fitted again, and its pairs and seeds join the plan's. Once
    `plan.budget_minutes` have passed no further fold starts; the report says which folds each
    pair got.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"walk_forward_{plan.label}.md"
    progress = (
        Progress()
        if fresh
        else load_progress(path.with_suffix(".json"), plan=plan, settings=settings)
    )
    plan = replace(
        plan, pairs=_union(progress.pairs, plan.pairs), seeds=_union(progress.seeds, plan.seeds)
    )
    with active_run(
        settings,
        experiment=settings.evaluation_experiment_name,
        run_name=f"walk-forward-{plan.label}",
    ):
        if not _resumed():
            mlflow.log_params(
                {
                    "pairs": ",".join(plan.pairs),
                    "model_type": plan.model_type,
                    "feature_set": plan.feature_set,
                    "folds": plan.folds,
                    "test_size": plan.test_size,
                    "epochs": plan.epochs,
                    "patience": plan.patience,
                    "seed": plan.seed,
                    "max_rows": plan.max_rows,
                    "budget_minutes": plan.budget_minutes,
                }
            )
        mlflow.log_param("seeds", ",".join(map(str, plan.seeds)))
        started = time.perf_counter()
        budget = plan.budget_minutes * 60.0
        data: dict[str, PairData] = {}
        stopped = False
        for key in plan.schedule():
            if key in progress.reports:
                continue
            if budget and time.perf_counter() - started >= budget:
                stopped = True
                logger.info("budget of %g min spent: stopping before %s", plan.budget_minutes, key)
                break
            pair = key[0]
            if pair not in data:
                data[pair] = pair_data(pair, plan=plan, settings=settings)
                _check_windows(pair, data[pair], progress)
            report, rows = run_fold(key, data[pair], plan=plan, settings=settings)
            progress.add(key, report, rows)
            _log_fold(report, prefix="" if len(plan.seeds) == 1 else f"seed{key[2]}/")
            if on_fold is not None:
                on_fold(report)
            _write(
                path,
                progress,
                plan=plan,
                settings=settings,
                elapsed=progress.elapsed + time.perf_counter() - started,
                stopped=False,
            )
        elapsed = progress.elapsed + time.perf_counter() - started
        reports = progress.ordered(plan, settings=settings)
        for report in reports:
            if report.fold == "all":
                _log_fold(report, prefix="" if len(plan.seeds) == 1 else f"seed{report.seed}/")
        summaries = summarise(reports, progress.rows, required=required_baselines(plan.model_type))
        for summary in summaries:
            _log_summary(summary)
        mlflow.log_metric("elapsed_seconds", elapsed)
        _write(path, progress, plan=plan, settings=settings, elapsed=elapsed, stopped=stopped)
        mlflow.log_artifact(str(path))
        mlflow.log_artifact(str(path.with_suffix(".json")))
    return reports, path


def _write(
    path: Path,
    progress: Progress,
    *,
    plan: EvaluationPlan,
    settings: Settings,
    elapsed: float,
    stopped: bool,
) -> None:
    document = progress_document(
        progress, plan=plan, settings=settings, elapsed=elapsed, stopped=stopped
    )
    path.write_text(render_markdown(document))
    # Written aside and moved into place: a run killed while writing keeps its last whole report.
    target = path.with_suffix(".json")
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(target)


def progress_document(
    progress: Progress, *, plan: EvaluationPlan, settings: Settings, elapsed: float, stopped: bool
) -> dict[str, Any]:
    """The JSON report of what `progress` holds (`report_document`), with whether the budget
    stopped the run and the folds each pair got."""
    document = report_document(
        progress.ordered(plan, settings=settings),
        progress.rows,
        plan=plan,
        settings=settings,
        elapsed=elapsed,
        complete=all(key in progress.reports for key in plan.schedule()),
    )
    document["stopped"] = "budget" if stopped else None
    document["folds_got"] = progress.got(plan)
    return document


def _model_shape(settings: Settings) -> dict[str, Any]:
    return {
        "layers": settings.lstm_layers,
        "units": settings.lstm_units,
        "dropout": settings.dropout,
        "sequence_length": settings.sequence_length,
        "horizon": settings.horizon,
        "batch_size": settings.batch_size,
        "validation_fraction": settings.validation_fraction,
        "metric": settings.promotion_metric,
    }


def report_document(
    reports: list[FoldReport],
    rows: dict[Key, FoldRows],
    *,
    plan: EvaluationPlan,
    settings: Settings,
    elapsed: float,
    complete: bool,
) -> dict[str, Any]:
    """The JSON report: the plan, the model's shape, every seed's folds and their rows, and per
    pair and fold the seed ensemble and the seeds' spread (`summarise` of `reports` and their
    `rows`)."""
    folds = [(r.pair, r.fold, r.seed) for r in reports if r.fold != "all"]
    return _jsonable(
        {
            "plan": asdict(plan),
            "model": _model_shape(settings),
            "elapsed_seconds": elapsed,
            "complete": complete,
            "stopped": None,
            "folds_got": {},
            "folds": [asdict(r) for r in reports],
            "summary": [
                asdict(s)
                for s in summarise(reports, rows, required=required_baselines(plan.model_type))
            ],
            "rows": [rows_record(key, rows[key]) for key in folds if key in rows],
        }
    )


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


def _resumed() -> bool:
    # Under `mlflow run` the entry point's parameters are logged already.
    run = mlflow.active_run()
    return run is not None and bool(run.data.params)


def _log_fold(report: FoldReport, *, prefix: str = "") -> None:
    step = 0 if report.fold == "all" else int(report.fold)
    suffix = "_pooled" if report.fold == "all" else ""
    key = f"{prefix}{report.pair}"
    values = {
        f"{key}/{name}/{metric}{suffix}": value
        for name, metrics in report.metrics.items()
        for metric, value in metrics.items()
    }
    against = report.verdicts[report.strongest_baseline]
    values.update(
        {
            f"{key}/beats_mean_difference{suffix}": float(against["mean"]),
            f"{key}/beats_interval_low{suffix}": float(against["low"]),
            f"{key}/beats_interval_high{suffix}": float(against["high"]),
            f"{key}/beats_rows{suffix}": float(against["rows"]),
            f"{key}/beats{suffix}": float(report.beats_baseline),
        }
    )
    mlflow.log_metrics(values, step=step)


def _log_summary(summary: SeedSummary) -> None:
    step = 0 if summary.fold == "all" else int(summary.fold)
    suffix = "_pooled" if summary.fold == "all" else ""
    against = summary.verdicts[summary.strongest_baseline]
    values: dict[str, float] = {
        f"{summary.pair}/beats_seeds{suffix}": float(summary.beats_seeds),
        f"{summary.pair}/ensemble/beats{suffix}": float(summary.beats_baseline),
        f"{summary.pair}/ensemble/beats_mean_difference{suffix}": float(against["mean"]),
        f"{summary.pair}/ensemble/beats_interval_low{suffix}": float(against["low"]),
        f"{summary.pair}/ensemble/beats_interval_high{suffix}": float(against["high"]),
    }
    for name, metrics in summary.metrics.items():
        for metric, value in metrics.items():
            if not math.isnan(value):
                values[f"{summary.pair}/ensemble/{name}/{metric}{suffix}"] = value
            mean, sd = summary.seed_mean[name][metric], summary.seed_sd[name][metric]
            if not math.isnan(mean):
                values[f"{summary.pair}/{name}/{metric}_mean{suffix}"] = mean
            if not math.isnan(sd):
                values[f"{summary.pair}/{name}/{metric}_sd{suffix}"] = sd
    mlflow.log_metrics(values, step=step)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


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
