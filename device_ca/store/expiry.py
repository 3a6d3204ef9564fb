"""Certificates by notAfter (RFC 5280 §4.1.2.5): the expiry job's transaction, the renewal-window
listing and the scrape's counts.

A good certificate whose notAfter has passed is *lapsed*; the expiry job handles each lapse once:
``expired_at`` is set by a conditional UPDATE (``expired_at IS NULL AND status = 'good'``) in the
transaction that appends its audit event and queues its outbox rows, so two holders of the janitor
lease that overlap (one stalled past its lease) handle disjoint sets, and a holder that dies mid-job
leaves either a whole batch or nothing. Revoked certificates are not lapsed: their revocation already
ended them (and disabled their Keycloak client).

"Renewed" below means ``superseded_by`` is set: the device re-enrolled and the newer certificate
carries on; a renewed certificate is neither due for renewal nor counted as expired.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

import sqlalchemy as sa

from device_ca.store import audit
from device_ca.store.db import Database
from device_ca.store.issuance_sql import CERTIFICATES, INSERT_OUTBOX, outbox_row
from device_ca.store.records import AuditEvent, OutboxMessage, utc

ACTOR = "system:expiry"
_TS = sa.DateTime(timezone=True)


@dataclass(frozen=True)
class Lapsed:
    """A good certificate whose notAfter has passed, as the expiry job handles it."""
    serial: str
    issuer: str
    device_id: str
    policy: str
    not_after: dt.datetime
    superseded_by: str | None


@dataclass(frozen=True)
class Expiring:
    """A good, unrenewed certificate inside a renewal window (or already past notAfter)."""
    serial: str
    device_id: str
    policy: str
    subject: str
    not_after: dt.datetime


@dataclass(frozen=True)
class ExpiryCounts:
    renewal_due: int          # good, unrenewed, notAfter within the policy's renewal window, not yet passed
    expired: int              # good, unrenewed, notAfter passed (the device let it lapse)


@dataclass(frozen=True)
class ExpiryLag:
    unhandled: int                      # lapsed certificates the expiry job has not handled yet
    oldest: dt.datetime | None          # the earliest notAfter among them


_GOOD = CERTIFICATES.c.status == "good"
_UNHANDLED = CERTIFICATES.c.expired_at.is_(None)
_NOT_RENEWED = CERTIFICATES.c.superseded_by.is_(None)


def _horizon(horizons: dict[str, dt.datetime] | dt.datetime, otherwise: dt.datetime):
    """notAfter bound: one time, or per policy (a policy not named: ``otherwise``)."""
    if isinstance(horizons, dt.datetime):
        return sa.literal(horizons, _TS)
    if not horizons:
        return sa.literal(otherwise, _TS)
    return sa.case({name: sa.literal(at, _TS) for name, at in horizons.items()}, value=CERTIFICATES.c.policy,
                   else_=sa.literal(otherwise, _TS))


class ExpiryRepo:
    def __init__(self, db: Database):
        self.db = db

    def lapse(self, now: dt.datetime, limit: int,
              messages_for: Callable[[Lapsed, frozenset[str]], list[OutboxMessage]]) -> list[Lapsed]:
        """Handle up to ``limit`` lapsed certificates, earliest notAfter first, in one transaction:
        mark each, append its ``certificate.expired`` event and queue ``messages_for(lapsed, live)``,
        where ``live`` are the policies of the device's other good certificates valid at ``now``.
        Returns those this call handled (none that another holder handled meanwhile)."""
        with self.db.transaction() as c:
            rows = c.execute(sa.select(CERTIFICATES.c.serial, CERTIFICATES.c.issuer, CERTIFICATES.c.device_id,
                                       CERTIFICATES.c.policy, CERTIFICATES.c.not_after, CERTIFICATES.c.superseded_by)
                             .where(_GOOD, _UNHANDLED, CERTIFICATES.c.not_after <= now)
                             .order_by(CERTIFICATES.c.not_after, CERTIFICATES.c.serial).limit(limit)).all()
            if not rows:
                return []
            # Conditional: a row another holder marked, or revoked, since the SELECT is skipped
            # (PostgreSQL re-checks the WHERE after waiting for that holder's row lock).
            marked = set(c.execute(sa.update(CERTIFICATES)
                                   .where(CERTIFICATES.c.serial.in_([r.serial for r in rows]), _GOOD, _UNHANDLED)
                                   .values(expired_at=now).returning(CERTIFICATES.c.serial)).scalars())
            lapsed = [Lapsed(r.serial, r.issuer, r.device_id, r.policy, utc(r.not_after), r.superseded_by)
                      for r in rows if r.serial in marked]
            if not lapsed:
                return []
            live: dict[str, set[str]] = {}
            devices = sorted({x.device_id for x in lapsed})
            for d, p in c.execute(sa.select(CERTIFICATES.c.device_id, CERTIFICATES.c.policy).where(
                    CERTIFICATES.c.device_id.in_(devices), _GOOD, CERTIFICATES.c.not_before <= now,
                    CERTIFICATES.c.not_after > now)):
                live.setdefault(d, set()).add(p)
            events, messages, queued = [], [], set()
            for x in lapsed:
                wanted = messages_for(x, frozenset(live.get(x.device_id, ())))
                fresh = [m for m in wanted if (m.topic, m.device_id, m.payload.get("realm")) not in queued]
                queued |= {(m.topic, m.device_id, m.payload.get("realm")) for m in wanted}
                messages += fresh
                events.append(AuditEvent(action="certificate.expired", actor=ACTOR, at=now, serial=x.serial,
                                         device_id=x.device_id,
                                         details={"policy": x.policy, "not_after": _iso(x.not_after),
                                                  "renewed_by": x.superseded_by,
                                                  "keycloak": sorted(m.payload.get("realm") for m in wanted)}))
            audit.append_many(c, events)
            if messages:
                c.execute(INSERT_OUTBOX, [outbox_row(m, now) for m in messages])
            return lapsed

    def lag(self, now: dt.datetime) -> ExpiryLag:
        with self.db.reading() as c:
            count, oldest = c.execute(sa.select(sa.func.count(), sa.func.min(CERTIFICATES.c.not_after))
                                      .where(_GOOD, _UNHANDLED, CERTIFICATES.c.not_after <= now)).one()
        return ExpiryLag(count, utc(oldest))

    def counts(self, now: dt.datetime, horizons: dict[str, dt.datetime]) -> dict[str, ExpiryCounts]:
        """Per policy (those with at least one such certificate): renewal due and expired, with
        ``horizons[policy]`` = now + the policy's renewal window. One indexed scan of the good
        certificates up to the furthest horizon."""
        horizon = _horizon(horizons, now)
        furthest = max(horizons.values(), default=now)
        expired = sa.func.sum(sa.case((CERTIFICATES.c.not_after <= now, 1), else_=0))
        due = sa.func.sum(sa.case((sa.and_(CERTIFICATES.c.not_after > now, CERTIFICATES.c.not_after <= horizon), 1),
                                  else_=0))
        query = (sa.select(CERTIFICATES.c.policy, due, expired)
                 .where(_GOOD, _NOT_RENEWED, CERTIFICATES.c.not_after <= max(furthest, now))
                 .group_by(CERTIFICATES.c.policy))
        with self.db.reading() as c:
            return {policy: ExpiryCounts(int(d or 0), int(e or 0)) for policy, d, e in c.execute(query)}

    def expiring(self, now: dt.datetime, horizons: dict[str, dt.datetime] | dt.datetime, *,
                 policy: str | None = None, include_expired: bool = False) -> list[Expiring]:
        """Good, unrenewed certificates whose notAfter is before their horizon (one time for all, or
        per policy), earliest first; those already past notAfter only with ``include_expired``."""
        query = (sa.select(CERTIFICATES.c.serial, CERTIFICATES.c.device_id, CERTIFICATES.c.policy,
                           CERTIFICATES.c.subject, CERTIFICATES.c.not_after)
                 .where(_GOOD, _NOT_RENEWED, CERTIFICATES.c.not_after <= _horizon(horizons, now))
                 .order_by(CERTIFICATES.c.not_after, CERTIFICATES.c.serial))
        if not include_expired:
            query = query.where(CERTIFICATES.c.not_after > now)
        if policy is not None:
            query = query.where(CERTIFICATES.c.policy == policy)
        with self.db.reading() as c:
            return [Expiring(r.serial, r.device_id, r.policy, r.subject, utc(r.not_after)) for r in c.execute(query)]


def _iso(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")
