"""The audit log as a hash chain: each event's hash covers its content and the previous hash.

``verify`` walks the chain in sequence order and reports an edited row (its hash no longer
matches), a deleted row (a gap in the sequence or a broken link) and reordered rows (broken
links), and compares the end of the chain with ``audit_head``, so dropping the newest rows is
also seen. An attacker who can rewrite the whole table and the head can rebuild a chain; the
chain makes tampering evident to anyone who kept an earlier head hash (``audit verify`` prints it).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json

import sqlalchemy as sa
from sqlmodel import Session, select

from device_ca.store.records import AuditCheckpoint, AuditEvent, AuditReport
from device_ca.store.tables import AuditCheckpointRow, AuditEventRow, AuditHeadRow, CertificateRow, RevocationRow

GENESIS = "0" * 64


def event_hash(seq: int, at: dt.datetime, action: str, actor: str, serial: str | None, device_id: str | None,
               details: str, prev_hash: str) -> str:
    body = json.dumps([seq, _iso(at), action, actor, serial, device_id, details, prev_hash],
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


_HEAD = AuditHeadRow.__table__
_EVENTS = AuditEventRow.__table__
# Built once: a statement built per call costs SQLAlchemy ~150 µs of cache-key work per execution.
_LOCK_HEAD = sa.select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_INSERT_HEAD = sa.insert(_HEAD)
_INSERT_EVENT = sa.insert(_EVENTS)
_MOVE_HEAD = sa.update(_HEAD).where(_HEAD.c.id == 1).values(seq=sa.bindparam("new_seq"),
                                                            hash=sa.bindparam("new_hash"))


def append(connection, event: AuditEvent) -> int:
    """Append inside the caller's transaction (a Core connection or an ORM session); the lock on
    the head row serialises appenders. Returns the event's sequence number."""
    return append_many(connection, [event])


def append_many(connection, events: list[AuditEvent]) -> int:
    """Append events in order inside the caller's transaction (one head lock, one INSERT round
    trip): the bulk path's audit trail costs microseconds per certificate. Returns the last
    sequence number."""
    if not events:
        raise ValueError("no audit events to append")
    head = connection.execute(_LOCK_HEAD).first()
    if head is None:
        connection.execute(_INSERT_HEAD, {"id": 1, "seq": 0, "hash": GENESIS})
        seq, prev = 0, GENESIS
    else:
        seq, prev = head
    rows = []
    for event in events:
        seq += 1
        details = json.dumps(event.details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        at = event.at.astimezone(dt.timezone.utc).replace(microsecond=0)    # stored as hashed: whole seconds
        digest = event_hash(seq, at, event.action, event.actor, event.serial, event.device_id, details, prev)
        rows.append({"seq": seq, "at": at, "action": event.action, "actor": event.actor, "serial": event.serial,
                     "device_id": event.device_id, "details": details, "prev_hash": prev, "hash": digest})
        prev = digest
    connection.execute(_INSERT_EVENT, rows)
    connection.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev})
    return seq


def verify(session: Session, expect_head: tuple[int, str] | None = None) -> tuple[AuditReport, str]:
    """Check the whole chain; return the report and the head as ``SEQ:HASH``. ``expect_head``: a head
    kept elsewhere earlier, which the chain must still hold (event SEQ with that hash): a chain
    rolled back or rewritten consistently after it no longer does."""
    problems: list[str] = []
    expected_seq, prev = 1, GENESIS
    count = 0
    found_expected = expect_head is None
    for row in session.exec(select(AuditEventRow).order_by(AuditEventRow.seq)):
        count += 1
        if row.seq != expected_seq:
            problems.append(f"sequence gap: expected event {expected_seq}, found {row.seq}")
        if row.prev_hash != prev:
            problems.append(f"event {row.seq}: link to the previous event is broken (deleted or reordered rows)")
        at = row.at if row.at.tzinfo else row.at.replace(tzinfo=dt.timezone.utc)
        recomputed = event_hash(row.seq, at, row.action, row.actor, row.serial, row.device_id, row.details,
                                row.prev_hash)
        if recomputed != row.hash:
            problems.append(f"event {row.seq}: content does not match its hash (edited row)")
        if at.microsecond:                          # the hash covers whole seconds, and so does what is stored
            problems.append(f"event {row.seq}: its time has a fraction of a second the hash does not cover "
                            "(edited row)")
        if expect_head is not None and row.seq == expect_head[0]:
            found_expected = row.hash == expect_head[1]
        expected_seq, prev = row.seq + 1, row.hash
    head = session.exec(select(AuditHeadRow).where(AuditHeadRow.id == 1)).first()
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS)
    if head_seq != expected_seq - 1 or head_hash != prev:
        problems.append(f"chain ends at event {expected_seq - 1} but the head records event {head_seq} "
                        "(newest events deleted or head edited)")
    if not found_expected:
        problems.append(f"the log no longer holds event {expect_head[0]} with the hash that was kept "
                        "(rolled back, truncated or rewritten since)")
    problems += cross_check(session)
    return AuditReport(events=count, problems=tuple(problems)), f"{head_seq}:{head_hash}"


_SHOWN = 10


def cross_check(session: Session) -> list[str]:
    """The certificates table against the chain: every certificate has its issuance event, every
    revoked one its revocation event, and every issuance event's certificate row is still there."""
    def serials(statement) -> set[str]:
        return set(session.exec(statement).all())

    issued_events = serials(select(AuditEventRow.serial).where(AuditEventRow.action == "certificate.issued",
                                                               AuditEventRow.serial.is_not(None)))
    revoked_events = serials(select(AuditEventRow.serial).where(AuditEventRow.action == "certificate.revoked",
                                                                AuditEventRow.serial.is_not(None)))
    certificates = serials(select(CertificateRow.serial))
    revoked = serials(select(RevocationRow.serial))
    problems = []
    for found, what in ((certificates - issued_events, "has no issuance event (inserted outside issuance, or "
                                                       "its event deleted)"),
                        (revoked - revoked_events, "is revoked without a revocation event"),
                        (issued_events - certificates, "has an issuance event but its certificate row is gone")):
        for serial in sorted(found)[:_SHOWN]:
            problems.append(f"certificate {serial} {what}")
        if len(found) > _SHOWN:
            problems.append(f"... and {len(found) - _SHOWN} more certificates that {what.split(' (')[0]}")
    return problems


# -- checkpoints: the head signed by the token's audit key -----------------------------------

def head(session: Session) -> tuple[int, str]:
    row = session.exec(select(AuditHeadRow).where(AuditHeadRow.id == 1)).first()
    return (row.seq, row.hash) if row else (0, GENESIS)


def checkpoints(session: Session) -> list[AuditCheckpoint]:
    return [AuditCheckpoint(r.seq, r.head_hash, _utc(r.at), bytes(r.signature))
            for r in session.exec(select(AuditCheckpointRow).order_by(AuditCheckpointRow.id))]


def newest_checkpoint(session: Session) -> AuditCheckpoint | None:
    r = session.exec(select(AuditCheckpointRow).order_by(AuditCheckpointRow.id.desc()).limit(1)).first()
    return None if r is None else AuditCheckpoint(r.seq, r.head_hash, _utc(r.at), bytes(r.signature))


def event_hashes(session: Session, seqs: set[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    ordered = sorted(seqs)
    for start in range(0, len(ordered), 500):
        rows = session.exec(select(AuditEventRow.seq, AuditEventRow.hash)
                            .where(AuditEventRow.seq.in_(ordered[start:start + 500])))
        out.update((seq, digest) for seq, digest in rows)
    return out


def _utc(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["append", "append_many", "verify", "event_hash"]
