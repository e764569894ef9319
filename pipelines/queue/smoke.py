"""`mlflow run . -e smoke`: a real training child that does little, for the queue's tests.

It takes the `train` entry point's parameters (unknown ones too: `mlflow run` passes an
undeclared `-P name=value` as `--name value`), resumes the run the queue created, logs a metric,
optionally registers a model version, sleeps, and exits 0 or fails as told. What it does comes
from the environment, so one scheduler's tests can vary it job by job:

    TBML_SMOKE_SECONDS         how long to "train" (default 0.2)
    TBML_SMOKE_FAIL            1: always fail (exit 3)
    TBML_SMOKE_FAIL_ATTEMPTS   fail while the attempt number (TBML_JOB_ATTEMPT) is at most N
    TBML_SMOKE_REGISTER        1: register a model version before sleeping
    TBML_SMOKE_PROMOTE         1: also make it production (alias and stage), archiving the
                               version that was
    TBML_SMOKE_PROMOTE_DELAY   seconds to sleep between registering and promoting (the chaos
                               test kills the scheduler in that window)
    TBML_SMOKE_MARKER          a file each training holds an exclusive lock on while it runs;
                               one that finds it locked (two trainings at once) appends a line to
                               `<marker>.overlap` and fails
    TBML_SMOKE_FAIL_PAIRS      comma-separated pairs that always fail
    TBML_SMOKE_TRACK           0: skip MLflow altogether (it takes seconds to import; tests of
                               ordering and timing that never look inside the run use this)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import sys
import time
from pathlib import Path
from typing import IO

logger = logging.getLogger("pipelines.queue.smoke")

EXIT_FAILED = 3


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}


def should_fail(*, pair: str, attempt: int) -> bool:
    """Whether this attempt must fail, per the environment."""
    if _flag("TBML_SMOKE_FAIL"):
        return True
    failing_pairs = {
        p.strip().upper() for p in os.environ.get("TBML_SMOKE_FAIL_PAIRS", "").split(",")
    }
    if pair.upper() in failing_pairs:
        return True
    return attempt <= int(os.environ.get("TBML_SMOKE_FAIL_ATTEMPTS", "0") or 0)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="smoke", description=__doc__)
    parser.add_argument("--pair", required=True)
    parser.add_argument("--model-type", default="lstm")
    parser.add_argument("--epochs", type=int, default=1)
    # Every other `train` parameter is accepted and ignored.
    args, _unknown = parser.parse_known_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in training; the exit status is what the queue sees."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s smoke: %(message)s")
    args = _parse(sys.argv[1:] if argv is None else argv)
    marker = _hold_marker(args.pair)  # held (the file stays open) until this process ends
    if marker is False:
        return EXIT_FAILED
    attempt = int(os.environ.get("TBML_JOB_ATTEMPT", "1"))
    seconds = float(os.environ.get("TBML_SMOKE_SECONDS", "0.2"))
    if os.environ.get("TBML_SMOKE_TRACK", "1").strip() == "0":
        logger.info(
            "pid %d, attempt %d, %s:%s, untracked", os.getpid(), attempt, args.pair, args.model_type
        )
        time.sleep(seconds)
        return EXIT_FAILED if should_fail(pair=args.pair, attempt=attempt) else 0

    import mlflow

    from pipelines.tracking import registered_model_name

    # `mlflow run` put MLFLOW_RUN_ID in our environment: start_run() resumes the queue's run.
    run_id = mlflow.start_run().info.run_id
    logger.info(
        "pid %d, run %s, attempt %d, %s:%s",
        os.getpid(),
        run_id,
        attempt,
        args.pair,
        args.model_type,
    )
    mlflow.log_metric("smoke_started", 1.0, step=attempt)
    registered: tuple[str, str] | None = None
    if _flag("TBML_SMOKE_REGISTER"):
        registered = _register(run_id, registered_model_name(args.pair, args.model_type))
        if _flag("TBML_SMOKE_PROMOTE"):
            time.sleep(float(os.environ.get("TBML_SMOKE_PROMOTE_DELAY", "0") or 0))
            _promote(*registered)
    time.sleep(seconds)
    if should_fail(pair=args.pair, attempt=attempt):
        logger.info("failing on purpose (attempt %d)", attempt)
        mlflow.end_run(status="FAILED")
        return EXIT_FAILED
    mlflow.log_metric("smoke_epochs", float(args.epochs))
    tags = {"tbml.promotion": "not_registered", "tbml.beats_baseline": "false"}
    if registered is not None:
        tags = {
            "tbml.registered_model": registered[0],
            "tbml.registered_version": registered[1],
            "tbml.promotion": "not_requested",
            "tbml.promotion_reason": "smoke runs are never promoted",
            "tbml.beats_baseline": "false",
        }
    mlflow.set_tags(tags)
    mlflow.end_run()
    return 0


def _hold_marker(pair: str) -> IO[str] | bool | None:
    """Lock `TBML_SMOKE_MARKER` for this process's life; False if another training holds it."""
    path = os.environ.get("TBML_SMOKE_MARKER")
    if not path:
        return None
    handle = Path(path).open("a")  # noqa: SIM115 (kept open: the lock lasts as long as we do)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with Path(f"{path}.overlap").open("a") as overlap:
            overlap.write(f"pid {os.getpid()} ({pair}) found another training running\n")
        logger.error("another training holds %s: two trainings at once", path)
        return False
    return handle


def _register(run_id: str, name: str) -> tuple[str, str]:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow.log_text("smoke model", "smoke/README.txt")
    client = MlflowClient()
    with contextlib.suppress(MlflowException):  # it may exist already
        client.create_registered_model(name)
    source = f"{mlflow.get_artifact_uri('smoke')}"
    version = client.create_model_version(name, source, run_id=run_id)
    logger.info("registered %s version %s", name, version.version)
    return name, str(version.version)


def _promote(name: str, version: str) -> None:
    """What the gate does for a promoted version: the alias, and the stage mirroring it."""
    import warnings

    from mlflow import MlflowClient

    from pipelines.tracking import ARCHIVED_STAGE, PRODUCTION_ALIAS, PRODUCTION_STAGE

    client = MlflowClient()
    client.set_registered_model_alias(name, PRODUCTION_ALIAS, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for other in client.search_model_versions(f"name = '{name}'"):
            if other.current_stage == PRODUCTION_STAGE:
                client.transition_model_version_stage(name, other.version, ARCHIVED_STAGE)
        client.transition_model_version_stage(name, version, PRODUCTION_STAGE)
    logger.info("promoted %s version %s", name, version)


if __name__ == "__main__":
    sys.exit(main())
