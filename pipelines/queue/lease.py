"""The dispatch lease: which scheduler may start trainings. A row, not a file in /tmp.

A scheduler takes or renews the lease with one conditional UPDATE (it is free, expired, or
already ours); the row count says whether it holds it. Every database serialises UPDATEs of one
row, so two schedulers can never both see a count of 1 for the same period. A crashed holder
stops renewing, and its lease expires after `ML_SCHEDULER_LEASE`.

Times come from the database's clock (`db_now_ms()`, computed in the UPDATE itself), never from
each host's: two hosts whose clocks disagree still agree on when a lease expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, case, or_, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from pipelines.db import read_session, write_session
from pipelines.queue.store import rowcount
from pipelines.queue.tables import DISPATCH_LEASE, SchedulerLease


class db_now_ms(FunctionElement[int]):  # noqa: N801 (an SQL function, named as one)
    """The database's current time in epoch milliseconds, as an SQL expression."""

    type = BigInteger()
    inherit_cache = True


@compiles(db_now_ms)
def _now_default(_element: Any, _compiler: Any, **_kw: Any) -> str:
    # PostgreSQL: clock_timestamp() is the wall clock now (now() would be the transaction's start).
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"


@compiles(db_now_ms, "sqlite")
def _now_sqlite(_element: Any, _compiler: Any, **_kw: Any) -> str:
    return "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"


def database_now(url: str) -> int:
    """The database's clock, epoch ms (one round trip)."""
    with read_session(url) as session:
        return int(session.execute(select(db_now_ms())).scalar_one())


@dataclass(frozen=True)
class LeaseState:
    """Who holds the lease, and until when (epoch ms)."""

    holder: str | None
    expires_at: int


def acquire(
    url: str, *, holder: str, ttl_ms: int, now: int | None = None, name: str = DISPATCH_LEASE
) -> bool:
    """Take the lease, or renew it if `holder` has it; True when `holder` holds it now.

    `now` (epoch ms) is for tests that play with time; by default the database's clock decides.
    """
    if ttl_ms <= 0:
        raise ValueError(f"ttl_ms must be > 0, got {ttl_ms}")
    at: int | ColumnElement[int] = db_now_ms() if now is None else now
    with write_session(url) as session:
        result = session.execute(
            update(SchedulerLease)
            .where(
                SchedulerLease.name == name,
                or_(
                    SchedulerLease.holder == holder,
                    SchedulerLease.holder.is_(None),
                    SchedulerLease.expires_at <= at,
                ),
            )
            .values(
                holder=holder,
                expires_at=at + ttl_ms,
                # When this holder's tenure began: kept on renewal, reset on a takeover (SET
                # expressions read the row's old values on every database).
                acquired_at=case(
                    (SchedulerLease.holder == holder, SchedulerLease.acquired_at), else_=at
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
