"""The functions APScheduler's job store refers to, by text (`pipelines.queue.jobs:dispatch`).

A stored job outlives the process that added it, so it holds no object: only this module's
function name and string arguments. The first argument is the deployment key (a hash of the
job store's URL); the function finds the scheduler of this process running for that key.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Protocol

logger = logging.getLogger(__name__)

DISPATCH = "pipelines.queue.jobs:dispatch"
RETRY = "pipelines.queue.jobs:retry_due"


class Runtime(Protocol):
    """What the stored jobs call on the scheduler that runs them."""

    def tick(self) -> None:
        """Run the dispatcher once."""


_runtimes: dict[str, Runtime] = {}
_lock = threading.Lock()


def deployment_key(jobstore_url: str) -> str:
    """A stable key for a job store, without the URL's credentials in the stored job."""
    return hashlib.sha256(jobstore_url.encode()).hexdigest()[:16]


def register(key: str, runtime: Runtime) -> None:
    """Route the stored jobs of `key` to `runtime` (the process's scheduler for it)."""
    with _lock:
        _runtimes[key] = runtime


def unregister(key: str, runtime: Runtime) -> None:
    """Stop routing `key` to `runtime` (if it is still the one registered)."""
    with _lock:
        if _runtimes.get(key) is runtime:
            del _runtimes[key]


def _runtime(key: str) -> Runtime | None:
    with _lock:
        runtime = _runtimes.get(key)
    if runtime is None:
        logger.warning("no training scheduler runs here for deployment %s; job skipped", key)
    return runtime


def dispatch(key: str) -> None:
    """The dispatcher tick (an interval job)."""
    runtime = _runtime(key)
    if runtime is not None:
        runtime.tick()


def retry_due(key: str, job_id: str) -> None:
    """A failed job's backoff has ended (a date job): dispatch now rather than at the next tick."""
    logger.info("retry of job %s is due", job_id)
    dispatch(key)
