"""The lifecycle's MLflow contract and bookkeeping: one place for names, stores and runs.

Training (`mlproject/`), the queue, `tbml up` and the service agree through what is defined
here: the tag names a training leaves on its run and version (which the queue reads back as
the job's outcome), the experiment a run goes to and where its artifacts live, and the runs
the queue creates, ends and undoes. What a training writes beyond that lives in
`mlproject/tracking.py`; what serving reads, in `service/registry_reader.py`.

Where artifacts go: with a local store (`sqlite:///...`) under `settings.artifact_root`. A
tracking server (`http(s)://`, started with `--serve-artifacts`) chooses for itself
(`mlflow-artifacts:/`), so every client uploads to and downloads from the server: a `file://`
location would send a worker's artifacts to its own disk, where API replicas on other machines
cannot read them.

MLflow is imported inside the functions: it takes seconds to import, and a scheduler that does
not dispatch, or an API process, never needs it for these.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pipelines.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

# --- the run of a queued job ----------------------------------------------------------------
TAG_JOB_ID = "tbml.job_id"
TAG_ATTEMPT = "tbml.attempt"
# Who asked for the job: api, cli, bootstrap, schedule, stale, drift.
TAG_REQUESTED_BY = "tbml.requested_by"
TAG_PAIR = "tbml.pair"
TAG_MODEL_TYPE = "tbml.model_type"
# --- what a training reports on its run (the queue reads these back) -------------------------
TAG_REGISTERED_MODEL = "tbml.registered_model"
TAG_REGISTERED_VERSION = "tbml.registered_version"
TAG_PROMOTION = "tbml.promotion"  # promoted | rejected | not_requested | not_registered
TAG_PROMOTION_REASON = "tbml.promotion_reason"  # one sentence: why
TAG_BEATS_BASELINE = "tbml.beats_baseline"  # true | false
# "start .. end" (ISO times) of the candles the training used (mlproject/train.py `_tags`);
# its end is the job's `data_end`, from which the retraining policy counts new data.
TAG_DATA_RANGE = "data_range"
# --- on registered versions too ---------------------------------------------------------------
TAG_UNPROVEN = "tbml.unproven"  # true: promoted without beating its strongest baseline
# The offline gate's comparison (written by every gating, removed when a later one has none).
TAG_GATE_ROWS = "tbml.gate_rows"  # rows compared, unseen by both versions
TAG_GATE_METRIC = "tbml.gate_metric"  # the per-row loss of the comparison: log_loss | brier
TAG_GATE_DELTA_MEAN = "tbml.gate_delta_mean"  # mean per-row loss, this version - production
TAG_GATE_DELTA_LOW = "tbml.gate_delta_low"  # 95 % paired (Newey-West) interval
TAG_GATE_DELTA_HIGH = "tbml.gate_delta_high"
TAG_GATE_LAG = "tbml.gate_lag"  # the interval's Newey-West lag, in rows
GATE_TAGS = (
    TAG_GATE_ROWS,
    TAG_GATE_METRIC,
    TAG_GATE_DELTA_MEAN,
    TAG_GATE_DELTA_LOW,
    TAG_GATE_DELTA_HIGH,
    TAG_GATE_LAG,
)
# On a version that was production when its run was cancelled: true, and what happened.
TAG_ROLLED_BACK = "tbml.rolled_back"
TAG_ROLLED_BACK_REASON = "tbml.rolled_back_reason"
PRODUCTION_ALIAS = "production"
# A version that passed the offline gate while another was production (ML_PROMOTION=shadow):
# scored in shadow on live candles, then promoted or retired by the challenger policy.
CHALLENGER_ALIAS = "challenger"
# On a challenger: when it became one (epoch ms), and the policy's decision with its numbers.
TAG_CHALLENGER_SINCE = "tbml.challenger_since"
TAG_CHALLENGER_OUTCOME = "tbml.challenger_outcome"  # promoted | retired
TAG_CHALLENGER_REASON = "tbml.challenger_reason"
TAG_LIVE_ROWS = "tbml.live_rows"  # realised candles both versions predicted
TAG_LIVE_DELTA_MEAN = "tbml.live_delta_mean"  # mean per-row log loss, challenger - production
TAG_LIVE_DELTA_LOW = "tbml.live_delta_low"  # 95 % paired interval (Newey-West)
TAG_LIVE_DELTA_HIGH = "tbml.live_delta_high"
# `tbml backtest` (mlproject.backtest_report): its runs, in `<ML_EXPERIMENT_NAME>-backtest`.
BACKTEST_EXPERIMENT_SUFFIX = "-backtest"
TAG_KIND = "tbml.kind"
KIND_BACKTEST = "backtest"
# The last candle (epoch ms) of the live comparison that made a version production or kept it
# there: a version's age counts from it when it is later than its data end.
TAG_VALIDATED_THROUGH = "tbml.validated_through"
# The legacy stages `set_production` mirrors the alias into (the UI still shows them).
PRODUCTION_STAGE = "Production"
ARCHIVED_STAGE = "Archived"
# What the registry answers for a model or alias that does not exist (file, SQL and REST stores).
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


@dataclass(frozen=True)
class RunReport:
    """What a finished training reported through its MLflow run's tags."""

    registered_model: str | None = None
    registered_version: str | None = None
    promotion: str | None = None
    promotion_reason: str | None = None
    beats_baseline: bool | None = None
    # End of the run's data range (`data_range` tag), epoch ms.
    data_end: int | None = None


def registered_model_name(pair: str, model_type: str) -> str:
    """The registry name of a pair's model of one architecture: `BTC-lstm`."""
    from pipelines.pairs import check_model_type, normalize_symbol

    return f"{normalize_symbol(pair)}-{check_model_type(model_type)}"


def production_version(client: MlflowClient, *, name: str) -> str | None:
    """The version number behind the `production` alias of `name`, or None if there is none.

    Any other failure (an unreachable tracking server, say) is raised, not taken for "no
    production version": the service keeps serving what it has while the registry is away.
    """
    return aliased_version(client, name=name, alias=PRODUCTION_ALIAS)


def aliased_version(client: MlflowClient, *, name: str, alias: str) -> str | None:
    """The version number behind `name@alias`, or None if there is none (other failures
    are raised)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND_CODES:
            return None
        raise


_SERVER_SCHEMES = ("http", "https")


def is_tracking_server(uri: str) -> bool:
    """Whether `uri` names an `mlflow server` (which stores artifacts itself) or a local store."""
    return uri.split(":", 1)[0].lower() in _SERVER_SCHEMES


def artifact_location(settings: Settings, name: str) -> str | None:
    """Where a new experiment's artifacts go: under the artifact root, or the server's choice."""
    if is_tracking_server(settings.tracking_uri):
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    return (settings.artifact_root / slug).as_uri()


def ensure_experiment(client: MlflowClient, *, name: str, settings: Settings) -> str:
    """The id of experiment `name`, created at `artifact_location` if it does not exist."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(
            client.create_experiment(name, artifact_location=artifact_location(settings, name))
        )
    except MlflowException:
        # Another process (the queue, a second training) created it since the lookup.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def client_for(settings: Settings) -> MlflowClient:
    """A client on the settings' tracking and registry store (no global MLflow state)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def ensure_training_experiment(client: MlflowClient, settings: Settings) -> str:
    """The id of the settings' experiment (`ML_EXPERIMENT_NAME`), created if new."""
    return ensure_experiment(client, name=settings.experiment_name, settings=settings)


def create_project_run(
    settings: Settings,
    *,
    run_name: str,
    pair: str,
    model_type: str,
    tags: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Create a run of the project's `train` entry point, for a child process to fill.

    Returns (experiment id, run id). This is what `mlflow run` does before it runs the entry
    point; doing it here lets the caller know the run before the child starts, watch it, and
    end it whatever the child does.
    """
    from mlflow.entities import SourceType
    from mlflow.utils.mlflow_tags import (
        MLFLOW_PROJECT_ENTRY_POINT,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
    )

    client = client_for(settings)
    experiment_id = ensure_training_experiment(client, settings)
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={
            MLFLOW_SOURCE_NAME: str(PROJECT_ROOT),
            MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.PROJECT),
            MLFLOW_PROJECT_ENTRY_POINT: settings.training_entry_point,
            TAG_PAIR: pair,
            TAG_MODEL_TYPE: model_type,
            **(tags or {}),
        },
    )
    return experiment_id, str(run.info.run_id)


def create_job_run(
    settings: Settings,
    *,
    job_id: str,
    attempt: int,
    pair: str,
    model_type: str,
    requested_by: str = "api",
) -> tuple[str, str]:
    """Create the MLflow run an attempt's child will fill; return (experiment id, run id)."""
    return create_project_run(
        settings,
        run_name=f"{job_id}-attempt-{attempt}",
        pair=pair,
        model_type=model_type,
        tags={TAG_JOB_ID: job_id, TAG_ATTEMPT: str(attempt), TAG_REQUESTED_BY: requested_by},
    )


def read_report(settings: Settings, run_id: str) -> RunReport:
    """The outcome a finished training wrote into its run's tags."""
    tags = client_for(settings).get_run(run_id).data.tags
    beats = tags.get(TAG_BEATS_BASELINE)
    return RunReport(
        registered_model=tags.get(TAG_REGISTERED_MODEL),
        registered_version=tags.get(TAG_REGISTERED_VERSION),
        promotion=tags.get(TAG_PROMOTION),
        promotion_reason=tags.get(TAG_PROMOTION_REASON),
        beats_baseline=None if beats is None else beats.strip().lower() == "true",
        data_end=_data_end_or_none(tags.get(TAG_DATA_RANGE), run_id=run_id),
    )


def parse_data_end(data_range: str) -> datetime:
    """The end of a `data_range` tag ("start .. end", ISO times) as an aware UTC datetime.

    A time without an offset is taken as UTC (the candles' times are UTC).
    """
    _start, sep, end = data_range.partition(" .. ")
    if not sep or not end.strip():
        raise ValueError(
            f"data_range {data_range!r} is not 'START .. END' (ISO times, as training tags it)"
        )
    try:
        moment = datetime.fromisoformat(end.strip())
    except ValueError:
        raise ValueError(
            f"data_range {data_range!r}: end {end.strip()!r} is not an ISO time"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _data_end_or_none(data_range: str | None, *, run_id: str) -> int | None:
    """`parse_data_end` in epoch ms; None (with a warning for a malformed tag) when unknown."""
    if data_range is None:
        return None
    try:
        return int(parse_data_end(data_range).timestamp() * 1000)
    except ValueError as error:
        logger.warning("run %s: %s; its data end stays unknown", run_id, error)
        return None


def end_run(settings: Settings, run_id: str, *, status: str) -> bool:
    """End the run with `status` (KILLED, FAILED, FINISHED) unless it has already ended."""
    from mlflow.entities import RunStatus

    client = client_for(settings)
    # RunInfo.status is the status's name ("KILLED"); is_terminated takes its number.
    if RunStatus.is_terminated(RunStatus.from_string(client.get_run(run_id).info.status)):
        return False
    client.set_terminated(run_id, status=status)
    return True


def force_status(settings: Settings, run_id: str, *, status: str) -> None:
    """Set the run's status even if it has ended (a killed run is KILLED, whatever it said)."""
    client_for(settings).set_terminated(run_id, status=status)
