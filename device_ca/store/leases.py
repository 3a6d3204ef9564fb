"""Leases in the database: one holder at a time for a named job, across the threads, processes and
nodes sharing the database (SQLite on one host, PostgreSQL across hosts).

A holder takes a lease that is free or expired and extends it while it works; a holder that dies
stops extending it and another takes it over once it has expired, so no job waits longer than one
lease period for a new holder. A release expires the lease at once (the row stays). Every change of
holder is written to ``lease_history`` in the same transaction, with the time the previous holder's
lease ran out: the record that two holders never overlapped. Times come from the nodes' clocks,
which a CA keeps in step anyway (NTP): certificate validity depends on them too.
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from device_ca.store.db import Database
from device_ca.store.records import utc
from device_ca.store.tables import LeaseHistoryRow, LeaseRow

_LEASES = LeaseRow.__table__
_HISTORY = LeaseHistoryRow.__table__


def new_holder() -> str:
    """A holder name unique to this process and call: host, process id and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    acquired_at: dt.datetime | None
    expires_at: dt.datetime


@dataclass(frozen=True)
class Handover:
    name: str
    holder: str
    acquired_at: dt.datetime
    previous_holder: str | None
    previous_expires_at: dt.datetime | None


class LeaseRepo:
    def __init__(self, db: Database):
        self.db = db

    def acquire(self, name: str, holder: str, now: dt.datetime, ttl: dt.timedelta) -> bool:
        """Take or extend the lease ``name`` unless another holder's lease is still running."""
        until = now + ttl
        try:
            with self.db.transaction() as c:
                extended = c.execute(sa.update(_LEASES).where(_LEASES.c.name == name, _LEASES.c.holder == holder,
                                                              _LEASES.c.expires_at > now)
                                     .values(expires_at=until))
                if extended.rowcount == 1:
                    return True
                previous = c.execute(sa.select(_LEASES.c.holder, _LEASES.c.expires_at)
                                     .where(_LEASES.c.name == name)).first()
                if previous is None:
                    c.execute(sa.insert(_LEASES).values(name=name, holder=holder, expires_at=until, acquired_at=now))
                else:
                    taken = c.execute(sa.update(_LEASES)
                                      .where(_LEASES.c.name == name, _LEASES.c.holder == previous.holder,
                                             _LEASES.c.expires_at == previous.expires_at,
                                             _LEASES.c.expires_at <= now)
                                      .values(holder=holder, expires_at=until, acquired_at=now))
                    if taken.rowcount != 1:
                        return False           # still held, or taken by another in between
                c.execute(sa.insert(_HISTORY).values(
                    name=name, holder=holder, acquired_at=now,
                    previous_holder=previous.holder if previous is not None else None,
                    previous_expires_at=previous.expires_at if previous is not None else None))
                return True
        except IntegrityError:          # another holder inserted the lease first
            return False

    def release(self, name: str, holder: str, now: dt.datetime) -> None:
        """Let the lease go now, if ``holder`` has it: another may take it at once."""
        with self.db.transaction() as c:
            c.execute(sa.update(_LEASES).where(_LEASES.c.name == name, _LEASES.c.holder == holder,
                                               _LEASES.c.expires_at > now)
                      .values(expires_at=now))

    def holder(self, name: str, now: dt.datetime) -> str | None:
        """Who holds ``name`` now (None: nobody; the lease is free or expired)."""
        with self.db.reading() as c:
            row = c.execute(sa.select(_LEASES.c.holder).where(_LEASES.c.name == name,
                                                               _LEASES.c.expires_at > now)).first()
        return row.holder if row else None

    def held(self, now: dt.datetime) -> list[Lease]:
        """Every lease running at ``now``."""
        with self.db.reading() as c:
            rows = c.execute(sa.select(_LEASES).where(_LEASES.c.expires_at > now).order_by(_LEASES.c.name))
            return [Lease(r.name, r.holder, utc(r.acquired_at), utc(r.expires_at)) for r in rows]

    def history(self, name: str | None = None) -> list[Handover]:
        query = sa.select(_HISTORY).order_by(_HISTORY.c.id)
        if name is not None:
            query = query.where(_HISTORY.c.name == name)
        with self.db.reading() as c:
            return [Handover(r.name, r.holder, utc(r.acquired_at), r.previous_holder, utc(r.previous_expires_at))
                    for r in c.execute(query)]
