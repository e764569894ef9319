"""The dispatch lease: which scheduler may start trainings. A row, not a file in /tmp.

A scheduler takes or renews the lease with one conditional UPDATE (it is free, expired, or
already ours); the row count says whether it holds it. Every database serialises UPDATEs of one
row, so two schedulers can never both see a count of 1 for the same period. A crashed holder
stops renewing, and its lease expires after `ML_SCHEDULER_LEASE`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, or_, update

from pipelines.db import read_session, write_session
from pipelines.queue.models import DISPATCH_LEASE, SchedulerLease
from pipelines.queue.store import rowcount


@dataclass(frozen=True)
class LeaseState:
    """Who holds the lease, and until when (epoch ms)."""

    holder: str | None
    expires_at: int


def acquire(url: str, *, holder: str, ttl_ms: int, now: int, name: str = DISPATCH_LEASE) -> bool:
    """Take the lease, or renew it if `holder` has it; True when `holder` holds it now."""
    with write_session(url) as session:
        result = session.execute(
            update(SchedulerLease)
            .where(
                SchedulerLease.name == name,
                or_(
                    SchedulerLease.holder == holder,
                    SchedulerLease.holder.is_(None),
                    SchedulerLease.expires_at <= now,
                ),
            )
            .values(
                holder=holder,
                expires_at=now + ttl_ms,
                # When this holder's tenure began: kept on renewal, reset on a takeover (SET
                # expressions read the row's old values on every database).
                acquired_at=case(
                    (SchedulerLease.holder == holder, SchedulerLease.acquired_at), else_=now
                ),
            )
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1


def release(url: str, *, holder: str, name: str = DISPATCH_LEASE) -> bool:
    """Give the lease up (a clean shutdown), so a successor need not wait for it to expire."""
    with write_session(url) as session:
        result = session.execute(
            update(SchedulerLease)
            .where(SchedulerLease.name == name, SchedulerLease.holder == holder)
            .values(holder=None, expires_at=0, acquired_at=None)
            .execution_options(synchronize_session=False)
        )
        return rowcount(result) == 1


def current(url: str, *, name: str = DISPATCH_LEASE) -> LeaseState:
    """The lease as stored now."""
    with read_session(url) as session:
        row = session.get(SchedulerLease, name)
        if row is None:
            return LeaseState(holder=None, expires_at=0)
        return LeaseState(holder=row.holder, expires_at=row.expires_at)
