"""The fleet at a glance, for the console's overview: certificates by policy and state, how many
expire in each stretch of the coming days, revocations per day, enrollments awaiting approval.

Each is one aggregate query that both SQLite and PostgreSQL run alike: time buckets are CASE
expressions over boundaries computed here (no dialect's date functions), so a count never depends
on the database's time zone. The Keycloak outbox backlog is ``OutboxRepo.backlog`` (the scrape
reads it too).

States (a certificate is in exactly one, at ``now``):
  good        status good, not renewed, notBefore..notAfter around ``now``
  renewed     status good, a newer certificate carries on (``superseded_by``), not yet expired
  revoked     status revoked (whatever its dates)
  expired     status good, notAfter passed (renewed or not)
  not-yet-valid  status good, notBefore still to come (back-dated issuance never makes this)
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from device_ca.store.db import Database
from device_ca.store.issuance_sql import CERTIFICATES
from device_ca.store.tables import PendingRequestRow, RevocationRow

STATES = ("good", "renewed", "revoked", "expired", "not-yet-valid")
_TS = sa.DateTime(timezone=True)
_PENDING = PendingRequestRow.__table__
_REVOCATIONS = RevocationRow.__table__


@dataclass(frozen=True)
class Buckets:
    """``counts[i]`` certificates fall in [``edges[i]``, ``edges[i + 1]``)."""
    edges: tuple[dt.datetime, ...]
    counts: tuple[int, ...]


def _state(now: dt.datetime):
    c = CERTIFICATES.c
    at = sa.literal(now, _TS)
    return sa.case((c.status == "revoked", "revoked"),
                   (c.not_after <= at, "expired"),
                   (c.not_before > at, "not-yet-valid"),
                   (c.superseded_by.is_not(None), "renewed"),
                   else_="good")


def _bucket(column, edges: tuple[dt.datetime, ...]):
    """The index i of the bucket [edges[i], edges[i+1]) that ``column`` falls in (NULL outside)."""
    return sa.case(*[(column < sa.literal(upper, _TS), i) for i, upper in enumerate(edges[1:])], else_=None)


def day_edges(start: dt.datetime, days: int, per: int = 1) -> tuple[dt.datetime, ...]:
    """``days // per + 1`` boundaries from ``start``, ``per`` days apart (``days`` a multiple of ``per``)."""
    if days <= 0 or per <= 0 or days % per:
        raise ValueError(f"{days} days do not split into buckets of {per}")
    return tuple(start + dt.timedelta(days=i) for i in range(0, days + 1, per))


def midnight(at: dt.datetime) -> dt.datetime:
    """The start of ``at``'s day in UTC."""
    at = at.astimezone(dt.timezone.utc)
    return dt.datetime(at.year, at.month, at.day, tzinfo=dt.timezone.utc)


class FleetRepo:
    def __init__(self, db: Database):
        self.db = db

    def counts(self, now: dt.datetime) -> dict[str, dict[str, int]]:
        """policy -> state -> number of certificates (only states that occur)."""
        state = _state(now).label("state")
        query = sa.select(CERTIFICATES.c.policy, state, sa.func.count()).group_by(CERTIFICATES.c.policy, state)
        out: dict[str, dict[str, int]] = {}
        with self.db.reading() as c:
            for policy, name, count in c.execute(query):
                out.setdefault(policy, {})[name] = int(count)
        return out

    def expiring(self, edges: tuple[dt.datetime, ...]) -> Buckets:
        """Good, unrenewed certificates by the bucket their notAfter falls in: those the fleet will
        lose unless the devices renew (revoked and renewed ones are gone or replaced already)."""
        c = CERTIFICATES.c
        bucket = _bucket(c.not_after, edges).label("bucket")
        query = (sa.select(bucket, sa.func.count())
                 .where(c.status == "good", c.superseded_by.is_(None),
                        c.not_after >= sa.literal(edges[0], _TS), c.not_after < sa.literal(edges[-1], _TS))
                 .group_by(bucket))
        return self._buckets(query, edges)

    def revocations(self, edges: tuple[dt.datetime, ...]) -> Buckets:
        """Revocations (any reason, superseded included) by the bucket their time falls in."""
        at = _REVOCATIONS.c.revoked_at
        bucket = _bucket(at, edges).label("bucket")
        query = (sa.select(bucket, sa.func.count())
                 .where(at >= sa.literal(edges[0], _TS), at < sa.literal(edges[-1], _TS))
                 .group_by(bucket))
        return self._buckets(query, edges)

    def pending_requests(self) -> int:
        """Enrollments waiting for an operator's approval."""
        with self.db.reading() as c:
            return int(c.execute(sa.select(sa.func.count()).where(_PENDING.c.state == "pending")).scalar())

    def _buckets(self, query, edges: tuple[dt.datetime, ...]) -> Buckets:
        counts = [0] * (len(edges) - 1)
        with self.db.reading() as c:
            for index, count in c.execute(query):
                if index is not None:
                    counts[int(index)] = int(count)
        return Buckets(edges, tuple(counts))
