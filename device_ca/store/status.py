"""Revocation status for relying parties: certificate status lookups, CRL numbers and CRLs,
OCSP responder certificates. Hot paths use Core statements."""
from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from device_ca.store import audit
from device_ca.store.db import ChangeCounter, Database, unavailable
from device_ca.store.records import AuditEvent, utc
from device_ca.store.tables import (CertificateRow, CrlRow, CrlStateRow, OcspResponderRow, OcspResponseRow,
                                    RevocationRow, SerialReservationRow)

_CERTS = CertificateRow.__table__
_REVOCATIONS = RevocationRow.__table__
_CRLS = CrlRow.__table__
_STATE = CrlStateRow.__table__
_RESPONDERS = OcspResponderRow.__table__
_PRESIGNED = OcspResponseRow.__table__
_RESERVATIONS = SerialReservationRow.__table__


@dataclass(frozen=True)
class CertStatus:
    status: str                      # good | revoked
    revoked_at: dt.datetime | None
    reason: str | None


@dataclass(frozen=True)
class Presigned:
    """A pre-signed OCSP answer (SHA-1 CertID, no nonce) as stored."""
    status: str
    responder_id: int
    this_update: dt.datetime
    next_update: dt.datetime
    der: bytes


@dataclass(frozen=True)
class StoredCrl:
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    der: bytes


@dataclass(frozen=True)
class PresignBacklog:
    due: int                             # unexpired certificates whose pre-signed answer is due
    due_since: dt.datetime | None        # since when the longest-waiting one is due (None: none due)


@dataclass(frozen=True)
class StoredResponder:
    id: int
    key_label: str
    der: bytes
    not_after: dt.datetime
    created_at: dt.datetime | None = None



_DUE_FROM = _CERTS.outerjoin(_REVOCATIONS, _REVOCATIONS.c.serial == _CERTS.c.serial) \
    .outerjoin(_PRESIGNED, _PRESIGNED.c.serial == _CERTS.c.serial)


def _due(ca: str, responder_id: int, signed_before: dt.datetime, now: dt.datetime) -> tuple:
    """Unexpired certificates of ``ca`` whose pre-signed answer is missing, states another status,
    comes from another responder or was signed before ``signed_before`` (over ``_DUE_FROM``)."""
    return (_CERTS.c.issuer == ca, _CERTS.c.not_after > now,
            sa.or_(_PRESIGNED.c.serial.is_(None), _PRESIGNED.c.status != _CERTS.c.status,
                   _PRESIGNED.c.responder_id != responder_id, _PRESIGNED.c.this_update < signed_before))


def mark_crl_dirty(connection, ca: str) -> None:
    """Inside a revocation's transaction: the next CRL run must publish a new CRL."""
    dialect = connection.dialect if hasattr(connection, "dialect") else connection.get_bind().dialect
    insert = (postgresql.insert if dialect.name == "postgresql" else sqlite.insert)(_STATE)
    connection.execute(insert.values(ca=ca, last_number=0, dirty=True)
                       .on_conflict_do_update(index_elements=["ca"], set_={"dirty": True}))


_STATUS_SQL = ("SELECT c.status, r.revoked_at, r.reason, o.status, o.responder_id, o.this_update, o.next_update, "
               "o.der FROM certificates c LEFT JOIN revocations r ON r.serial = c.serial "
               "LEFT JOIN ocsp_responses o ON o.serial = c.serial WHERE c.serial = ?")


class StatusRepo:
    def __init__(self, db: Database):
        self.db = db
        self._sqlite_path = sa.engine.make_url(db.url).database if db.url.startswith("sqlite") else None
        self._local = threading.local()
        self._changes = ChangeCounter(db.url) if self._sqlite_path and self._sqlite_path != ":memory:" else None

    def status(self, serial: str) -> CertStatus | None:
        """None if this CA never recorded a certificate with that serial."""
        return self.status_and_presigned(serial)[0]

    def status_and_presigned(self, serial: str) -> tuple[CertStatus | None, Presigned | None]:
        """The certificate's status and its pre-signed OCSP answer, if any. On SQLite this is the OCSP
        hot path's one query, made on a per-thread read-only connection without the ORM (~20 µs
        instead of ~400 µs); it sees every committed revocation at once (WAL readers read the latest
        commit)."""
        if self._sqlite_path:
            try:
                row = self._sqlite().execute(_STATUS_SQL, (serial,)).fetchone()
            except sqlite3.Error as exc:
                raise unavailable(exc) from None
            if row is None:
                return None, None
            parse = lambda v: utc(dt.datetime.fromisoformat(v)) if v else None  # noqa: E731
            row = (row[0], parse(row[1]), row[2], row[3], row[4], parse(row[5]), parse(row[6]), row[7])
        else:
            with self.db.reading() as c:
                row = c.execute(sa.select(_CERTS.c.status, _REVOCATIONS.c.revoked_at, _REVOCATIONS.c.reason,
                                          _PRESIGNED.c.status, _PRESIGNED.c.responder_id, _PRESIGNED.c.this_update,
                                          _PRESIGNED.c.next_update, _PRESIGNED.c.der)
                                .select_from(_CERTS.outerjoin(_REVOCATIONS, _REVOCATIONS.c.serial == _CERTS.c.serial)
                                             .outerjoin(_PRESIGNED, _PRESIGNED.c.serial == _CERTS.c.serial))
                                .where(_CERTS.c.serial == serial)).first()
            if row is None:
                return None, None
            row = (row[0], utc(row[1]), row[2], row[3], row[4], utc(row[5]), utc(row[6]), row[7])
        status = CertStatus(row[0], row[1], row[2])
        presigned = None if row[3] is None else Presigned(row[3], row[4], row[5], row[6], bytes(row[7]))
        return status, presigned

    # -- pre-signed OCSP answers -----------------------------------------------------------

    def presign_due(self, ca: str, responder_id: int, signed_before: dt.datetime, now: dt.datetime,
                    limit: int) -> list[tuple[str, CertStatus]]:
        """Unexpired certificates of ``ca`` whose pre-signed answer is missing, states another status,
        comes from another responder or was signed before ``signed_before``."""
        with self.db.reading() as c:
            rows = c.execute(
                sa.select(_CERTS.c.serial, _CERTS.c.status, _REVOCATIONS.c.revoked_at, _REVOCATIONS.c.reason)
                .select_from(_DUE_FROM).where(*_due(ca, responder_id, signed_before, now))
                .order_by(_PRESIGNED.c.this_update.is_not(None), _PRESIGNED.c.this_update).limit(limit)).all()
        return [(r[0], CertStatus(r[1], utc(r[2]), r[3])) for r in rows]

    def presign_backlog(self, ca: str, signed_before: dt.datetime, now: dt.datetime,
                        refresh_after: dt.timedelta) -> PresignBacklog:
        """How far pre-signing is behind (``presign_due``'s rows, counted): how many answers are due,
        and since when the longest-waiting one is: a new certificate since its issuance, a status
        change since the revocation, a rotated responder since its certificate was made, an ageing
        answer since ``refresh_after`` after it was signed. One scan of the unexpired certificates."""
        responder = self.active_responder(ca, now)
        responder_id = responder.id if responder is not None else -1
        with self.db.reading() as c:
            row = c.execute(
                sa.select(sa.func.count(),
                          sa.func.min(sa.case((_PRESIGNED.c.serial.is_(None), _CERTS.c.issued_at))),
                          sa.func.min(sa.case((_PRESIGNED.c.status != _CERTS.c.status,
                                               sa.func.coalesce(_REVOCATIONS.c.revoked_at, _CERTS.c.issued_at)))),
                          sa.func.count(sa.case((_PRESIGNED.c.responder_id != responder_id, 1))),
                          sa.func.min(_PRESIGNED.c.this_update))
                .select_from(_DUE_FROM).where(*_due(ca, responder_id, signed_before, now))).one()
        due, new, changed, rotated, oldest = row[0], utc(row[1]), utc(row[2]), row[3], utc(row[4])
        since = [t for t in (new, changed) if t is not None]
        if rotated and responder is not None:
            since.append(responder.created_at)
        if oldest is not None and oldest < signed_before:
            since.append(oldest + refresh_after)
        return PresignBacklog(due, min(since) if since else None)

    def save_presigned(self, rows: list[tuple[str, Presigned]]) -> None:
        """Insert or replace pre-signed answers, all in one transaction."""
        if not rows:
            return
        with self.db.transaction() as c:
            dialect = c.dialect.name
            insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_PRESIGNED)
            statement = insert.on_conflict_do_update(
                index_elements=["serial"],
                set_={k: insert.excluded[k] for k in ("status", "responder_id", "this_update", "next_update", "der")})
            c.execute(statement, [{"serial": serial, "status": p.status, "responder_id": p.responder_id,
                                   "this_update": p.this_update, "next_update": p.next_update, "der": p.der}
                                  for serial, p in rows])

    def change_marker(self) -> object:
        """Equal between two calls only if nothing was written to the database in between. On SQLite
        the change counter every device-ca writer moves (shared memory, well under a µs; an odd value,
        a write under way, is never equal to anything). On PostgreSQL a fresh object, never equal,
        so callers read the status from the database."""
        if self._changes is None:
            return object()
        try:
            value = self._changes.value()
        except OSError as exc:
            raise unavailable(exc) from None
        return object() if value % 2 else value

    def _sqlite(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            connection = sqlite3.connect(f"file:{self._sqlite_path}?mode=ro", uri=True, timeout=30,
                                         isolation_level=None, check_same_thread=False)
            self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    def revoked(self, ca: str) -> list[tuple[str, dt.datetime, str]]:
        with self.db.reading() as c:
            rows = c.execute(sa.select(_REVOCATIONS.c.serial, _REVOCATIONS.c.revoked_at, _REVOCATIONS.c.reason)
                             .select_from(_REVOCATIONS.join(_CERTS, _CERTS.c.serial == _REVOCATIONS.c.serial))
                             .where(_CERTS.c.issuer == ca))
            return [(r[0], utc(r[1]), r[2]) for r in rows]

    # -- CRLs --------------------------------------------------------------------------------

    def reserve_crl_number(self, ca: str) -> int:
        """The next CRL number, committed before signing: a number is never used twice."""
        with self.db.transaction() as c:
            row = c.execute(sa.select(_STATE.c.last_number).where(_STATE.c.ca == ca).with_for_update()).first()
            if row is None:
                c.execute(sa.insert(_STATE).values(ca=ca, last_number=1, dirty=False))
                return 1
            number = row[0] + 1
            c.execute(sa.update(_STATE).where(_STATE.c.ca == ca).values(last_number=number, dirty=False))
            return number

    def save_crl(self, ca: str, number: int, this_update: dt.datetime, next_update: dt.datetime, entries: int,
                 der: bytes, event: AuditEvent | None = None) -> None:
        """Store a signed CRL, with its audit ``event`` if given (in the same transaction)."""
        with self.db.transaction() as c:
            c.execute(sa.insert(_CRLS).values(number=number, ca=ca, this_update=this_update, next_update=next_update,
                                              entries=entries, der=der))
            if event is not None:
                audit.append(c, event)

    def crl_dirty_again(self, ca: str) -> None:
        with self.db.transaction() as c:
            mark_crl_dirty(c, ca)

    def latest_crl(self, ca: str) -> StoredCrl | None:
        with self.db.reading() as c:
            row = c.execute(sa.select(_CRLS.c.number, _CRLS.c.this_update, _CRLS.c.next_update, _CRLS.c.der)
                            .where(_CRLS.c.ca == ca).order_by(_CRLS.c.number.desc()).limit(1)).first()
        return None if row is None else StoredCrl(row[0], utc(row[1]), utc(row[2]), bytes(row[3]))

    def latest_crl_times(self, ca: str) -> tuple[int, dt.datetime, dt.datetime] | None:
        """(number, thisUpdate, nextUpdate) of the newest CRL, without reading the CRL."""
        with self.db.reading() as c:
            row = c.execute(sa.select(_CRLS.c.number, _CRLS.c.this_update, _CRLS.c.next_update)
                            .where(_CRLS.c.ca == ca).order_by(_CRLS.c.number.desc()).limit(1)).first()
        return None if row is None else (row[0], utc(row[1]), utc(row[2]))

    def latest_crl_number(self, ca: str) -> int | None:
        """The newest CRL's number, without reading the CRL."""
        with self.db.reading() as c:
            return c.execute(sa.select(sa.func.max(_CRLS.c.number)).where(_CRLS.c.ca == ca)).scalar()

    def crl_dirty(self, ca: str) -> bool:
        with self.db.reading() as c:
            row = c.execute(sa.select(_STATE.c.dirty).where(_STATE.c.ca == ca)).first()
        return row is None or bool(row[0])

    # -- OCSP responders -------------------------------------------------------------------

    def add_responder(self, ca: str, key_label: str, serial: str, der: bytes, not_after: dt.datetime,
                      created_at: dt.datetime, tbs_sha256: str) -> None:
        with self.db.transaction() as c:
            c.execute(sa.insert(_RESERVATIONS).values(serial=serial, issuer=ca, device_id="ocsp-responder",
                                                      policy="_ocsp-responder", tbs_sha256=tbs_sha256,
                                                      state="issued", reserved_at=created_at))
            c.execute(sa.insert(_RESPONDERS).values(ca=ca, key_label=key_label, serial=serial, der=der,
                                                    not_after=not_after, created_at=created_at))

    def responder_key_labels(self) -> set[str]:
        """The key labels of every responder certificate ever made, of every CA."""
        with self.db.reading() as c:
            return {r[0] for r in c.execute(sa.select(_RESPONDERS.c.key_label))}

    def active_responder(self, ca: str, now: dt.datetime) -> StoredResponder | None:
        with self.db.reading() as c:
            row = c.execute(sa.select(_RESPONDERS.c.id, _RESPONDERS.c.key_label, _RESPONDERS.c.der,
                                      _RESPONDERS.c.not_after, _RESPONDERS.c.created_at)
                            .where(_RESPONDERS.c.ca == ca, _RESPONDERS.c.not_after > now)
                            .order_by(_RESPONDERS.c.not_after.desc(), _RESPONDERS.c.id.desc()).limit(1)).first()
        return None if row is None else StoredResponder(row[0], row[1], bytes(row[2]), utc(row[3]), utc(row[4]))
