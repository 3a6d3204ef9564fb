"""The outbox as a queue: rows written in the issuing or revoking transaction, read and settled in
id order by a drainer that holds a lease (store/leases.py: one drainer at a time across workers and
nodes)."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import sqlalchemy as sa

from device_ca.store.db import Database
from device_ca.store.records import OutboxEntry, utc
from device_ca.store.tables import OutboxRow

_OUTBOX = OutboxRow.__table__
MAX_ERROR = 1024


@dataclass(frozen=True)
class OutboxBacklog:
    pending: int
    oldest: dt.datetime | None          # the oldest pending row's creation
    failing: int                        # pending rows that have failed at least once
    last_error: str | None              # the error of the newest such row


class OutboxRepo:
    def __init__(self, db: Database):
        self.db = db

    def pending(self, topic_prefix: str, *, limit: int | None = None, after_id: int = 0) -> list[OutboxEntry]:
        """Pending rows of the topics starting with ``topic_prefix``, oldest first."""
        query = (sa.select(_OUTBOX).where(_OUTBOX.c.state == "pending", _OUTBOX.c.topic.startswith(topic_prefix),
                                          _OUTBOX.c.id > after_id)
                 .order_by(_OUTBOX.c.id).limit(limit))
        with self.db.reading() as c:
            return [_entry(r) for r in c.execute(query)]

    def entries(self, topic_prefix: str, *, state: str | None = None) -> list[OutboxEntry]:
        query = sa.select(_OUTBOX).where(_OUTBOX.c.topic.startswith(topic_prefix)).order_by(_OUTBOX.c.id)
        if state:
            query = query.where(_OUTBOX.c.state == state)
        with self.db.reading() as c:
            return [_entry(r) for r in c.execute(query)]

    def next_due(self, topic_prefix: str) -> dt.datetime | None:
        """When the oldest pending row may be tried (None: nothing pending; a past time: now)."""
        query = (sa.select(_OUTBOX.c.created_at, _OUTBOX.c.next_attempt_at)
                 .where(_OUTBOX.c.state == "pending", _OUTBOX.c.topic.startswith(topic_prefix))
                 .order_by(_OUTBOX.c.id).limit(1))
        with self.db.reading() as c:
            row = c.execute(query).first()
        if row is None:
            return None
        return utc(row.next_attempt_at) or utc(row.created_at)

    def applied(self, entry_id: int, at: dt.datetime, outcome: str) -> None:
        with self.db.transaction() as c:
            c.execute(sa.update(_OUTBOX).where(_OUTBOX.c.id == entry_id, _OUTBOX.c.state == "pending")
                      .values(state="done", applied_at=at, outcome=outcome[:64], next_attempt_at=None))

    def applied_many(self, entry_ids: list[int], at: dt.datetime, outcome: str) -> None:
        if not entry_ids:
            return
        with self.db.transaction() as c:
            for start in range(0, len(entry_ids), 500):
                c.execute(sa.update(_OUTBOX).where(_OUTBOX.c.id.in_(entry_ids[start:start + 500]),
                                                   _OUTBOX.c.state == "pending")
                          .values(state="done", applied_at=at, outcome=outcome[:64], next_attempt_at=None))

    def failed(self, entry_id: int, error: str, retry_at: dt.datetime | None) -> None:
        with self.db.transaction() as c:
            c.execute(sa.update(_OUTBOX).where(_OUTBOX.c.id == entry_id)
                      .values(attempts=_OUTBOX.c.attempts + 1, last_error=error[:MAX_ERROR],
                              next_attempt_at=retry_at))

    def backlog(self) -> OutboxBacklog:
        """The queue at a glance (for /metrics): pending rows, the oldest one's age, how many of
        them have failed at least once, and the newest of their errors."""
        with self.db.reading() as c:
            pending, oldest, failing = c.execute(
                sa.select(sa.func.count(), sa.func.min(_OUTBOX.c.created_at), sa.func.count(_OUTBOX.c.last_error))
                .where(_OUTBOX.c.state == "pending")).one()
            error = c.execute(sa.select(_OUTBOX.c.last_error)
                              .where(_OUTBOX.c.state == "pending", _OUTBOX.c.last_error.is_not(None))
                              .order_by(_OUTBOX.c.id.desc()).limit(1)).scalar() if failing else None
        return OutboxBacklog(pending, utc(oldest), failing, error)


def _entry(r) -> OutboxEntry:
    return OutboxEntry(id=r.id, created_at=utc(r.created_at), topic=r.topic, device_id=r.device_id,
                       payload=json.loads(r.payload), state=r.state, attempts=r.attempts, last_error=r.last_error,
                       next_attempt_at=utc(r.next_attempt_at), applied_at=utc(r.applied_at), outcome=r.outcome)
