"""The audit chain read in sequence order for receivers outside the CA (``audit export``, the SIEM
webhook), and each receiver's delivery cursor.

The events table is already the durable, ordered log a delivery needs: every event is written in
the transaction of the change it records, with a gap-free ``seq``. A receiver's cursor (the last
``seq`` it confirmed) is all that delivery adds: moved forward only after the receiver's 2xx, and
only forward, so that a late answer to a holder that lost its lease cannot move it back.
"""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from device_ca.store.audit import GENESIS
from device_ca.store.db import Database
from device_ca.store.records import DeliveryCursor, LoggedEvent, utc
from device_ca.store.tables import AuditDeliveryRow, AuditEventRow, AuditHeadRow

_EVENTS = AuditEventRow.__table__
_CURSORS = AuditDeliveryRow.__table__
_HEAD = AuditHeadRow.__table__
MAX_ERROR = 1024


class AuditFeed:
    def __init__(self, db: Database):
        self.db = db

    def events(self, after: int = 0, limit: int = 500) -> list[LoggedEvent]:
        """Up to ``limit`` events with ``seq > after``, in sequence order."""
        query = sa.select(_EVENTS).where(_EVENTS.c.seq > after).order_by(_EVENTS.c.seq).limit(limit)
        with self.db.reading() as c:
            return [_logged(r) for r in c.execute(query)]

    def about(self, serial: str, limit: int = 100) -> list[LoggedEvent]:
        """The newest ``limit`` events about the certificate ``serial``, newest first: its history
        as the console shows it (audit_events.serial is indexed; device_id is not, so a device's
        history goes through its certificates' serials)."""
        query = sa.select(_EVENTS).where(_EVENTS.c.serial == serial).order_by(_EVENTS.c.seq.desc()).limit(limit)
        with self.db.reading() as c:
            return [_logged(r) for r in c.execute(query)]

    def head_seq(self) -> int:
        with self.db.reading() as c:
            return c.execute(sa.select(_HEAD.c.seq).where(_HEAD.c.id == 1)).scalar() or 0

    def cursor(self, name: str) -> DeliveryCursor:
        with self.db.reading() as c:
            r = c.execute(sa.select(_CURSORS).where(_CURSORS.c.name == name)).first()
        if r is None:
            return DeliveryCursor(0, GENESIS, None, 0, None, None)
        return DeliveryCursor(r.seq, r.hash, utc(r.delivered_at), r.failures, r.last_error, utc(r.last_attempt_at))

    def advance(self, name: str, seq: int, digest: str, at: dt.datetime) -> bool:
        """Move the cursor to ``seq`` (confirmed by the receiver) if it is behind; clears the failures.
        False: it was already there or further (another deliverer confirmed the same events)."""
        with self.db.transaction() as c:
            self._ensure(c, name)
            moved = c.execute(sa.update(_CURSORS).where(_CURSORS.c.name == name, _CURSORS.c.seq < seq)
                              .values(seq=seq, hash=digest, delivered_at=at, failures=0, last_error=None,
                                      last_attempt_at=at))
            return moved.rowcount == 1

    def failed(self, name: str, error: str, at: dt.datetime) -> int:
        """Note a failed attempt; returns the failures since the last confirmed delivery."""
        with self.db.transaction() as c:
            self._ensure(c, name)
            c.execute(sa.update(_CURSORS).where(_CURSORS.c.name == name)
                      .values(failures=_CURSORS.c.failures + 1, last_error=error[:MAX_ERROR], last_attempt_at=at))
            return c.execute(sa.select(_CURSORS.c.failures).where(_CURSORS.c.name == name)).scalar()

    @staticmethod
    def _ensure(c, name: str) -> None:
        """The cursor's row, created at seq 0 unless it exists (also if another deliverer creates it now)."""
        insert = {"sqlite": sqlite_insert, "postgresql": pg_insert}[c.dialect.name](_CURSORS)
        c.execute(insert.values(name=name, seq=0, hash=GENESIS, failures=0).on_conflict_do_nothing())


def _logged(r) -> LoggedEvent:
    return LoggedEvent(seq=r.seq, at=utc(r.at), action=r.action, actor=r.actor, serial=r.serial,
                       device_id=r.device_id, details=r.details, prev_hash=r.prev_hash, hash=r.hash)
