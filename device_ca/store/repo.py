"""Repositories: the only code that reads or writes tables; every write is one transaction."""
from __future__ import annotations

import datetime as dt
import json
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from device_ca.errors import DeviceCAError, Kind
from device_ca.store import audit
from device_ca.store.db import Database, after_key, migrate, translate_errors
from device_ca.store.audit_feed import AuditFeed
from device_ca.store.batches import BatchRepo
from device_ca.store.enrollment import EnrollmentRepo
from device_ca.store.expiry import ExpiryRepo
from device_ca.store.fleet import FleetRepo
from device_ca.store.issuance import IssuanceRepo
from device_ca.store.leases import LeaseRepo
from device_ca.store.rates import RateRepo
from device_ca.store.issuance_sql import CERTIFICATES, DEVICES, INSERT_OUTBOX, ROLES, SCOPES, outbox_row
from device_ca.store.outbox import OutboxRepo
from device_ca.store.state import StateRepo
from device_ca.store.status import StatusRepo, mark_crl_dirty
from device_ca.store.records import (AuditCheckpoint, AuditEvent, AuditReport, CaRecord, CertificateRecord, OutboxMessage,
                                     Reservation, StationScope, utc)
from device_ca.store.tables import (AuditCheckpointRow, BlockedKeyRow, CaCertificateRow, CertificateRow, OutboxRow, RevocationRow,
                                    SerialReservationRow)


class Store:
    def __init__(self, url: str, *, migrate_schema: bool = True):
        self.db = Database(url)
        if migrate_schema:
            with translate_errors():
                migrate(self.db.engine)
        self.enrollment = EnrollmentRepo(self.db)
        self.status = StatusRepo(self.db)
        self.queue = OutboxRepo(self.db)
        self.batches = BatchRepo(self.db)
        self.issuance = IssuanceRepo(self.db)
        self.state = StateRepo(self.db)
        self.leases = LeaseRepo(self.db)
        self.rates = RateRepo(self.db)
        self.audit_feed = AuditFeed(self.db)
        self.expiry = ExpiryRepo(self.db)
        self.fleet = FleetRepo(self.db)

    def ping(self) -> None:
        with self.db.read() as s:
            s.exec(sa.text("SELECT 1"))

    # -- CA certificates -------------------------------------------------------------------

    def ca_certificates(self) -> dict[str, CaRecord]:
        with self.db.read() as s:
            return {r.name: _ca(r) for r in s.exec(select(CaCertificateRow))}

    def save_ca(self, records: list[CaRecord], event: AuditEvent) -> None:
        try:
            with self.db.write() as s:
                if s.exec(select(CaCertificateRow)).first() is not None:
                    raise DeviceCAError(Kind.CONFLICT, "a CA already exists in this database; refusing to overwrite it")
                for r in records:
                    s.add(CaCertificateRow(**r.__dict__))
                audit.append(s, event)
        except IntegrityError as exc:
            raise DeviceCAError(Kind.CONFLICT, "a CA already exists in this database", cause=exc) from None

    def revoke_ca(self, name: str, reason: str, at: dt.datetime, actor: str, crl_of: str) -> CaRecord:
        """Mark the CA certificate ``name`` revoked and the CRL of ``crl_of`` (its issuer) due, with
        the audit event ``ca.revoked``: one transaction. CONFLICT if it is revoked already."""
        with self.db.write() as s:
            row = s.get(CaCertificateRow, name)
            if row is None:
                raise DeviceCAError(Kind.NOT_FOUND, f"no CA certificate named {name!r}")
            if row.status == "revoked":
                raise DeviceCAError(Kind.CONFLICT, f"CA {name!r} was revoked already ({row.revocation_reason}, "
                                    f"{utc(row.revoked_at):%Y-%m-%dT%H:%M:%SZ})")
            row.status, row.revoked_at, row.revocation_reason = "revoked", at, reason
            s.add(row)
            mark_crl_dirty(s, crl_of)
            audit.append(s, AuditEvent(action="ca.revoked", actor=actor, at=at, serial=row.serial,
                                       details={"ca": name, "reason": reason, "crl": crl_of}))
            s.flush()
            return _ca(row)

    def add_issuing_ca(self, record: CaRecord, event: AuditEvent) -> None:
        """A new issuing CA generation (``ca rollover``) with its audit event, in one transaction."""
        try:
            with self.db.write() as s:
                if s.get(CaCertificateRow, record.name) is not None:
                    raise DeviceCAError(Kind.CONFLICT, f"a CA named {record.name!r} exists already")
                s.add(CaCertificateRow(**record.__dict__))
                audit.append(s, event)
        except IntegrityError as exc:
            raise DeviceCAError(Kind.CONFLICT, f"a CA named {record.name!r} exists already", cause=exc) from None

    def retire_ca(self, name: str, event: AuditEvent) -> bool:
        """Mark an active issuing CA retired (its last certificate expired): no more CRLs or OCSP
        answers are signed with it. False if it is not active (retired or revoked meanwhile)."""
        with self.db.write() as s:
            row = s.get(CaCertificateRow, name)
            if row is None or row.status != "active":
                return False
            row.status = "retired"
            s.add(row)
            audit.append(s, event)
            return True

    def issuer_counts(self, now: dt.datetime) -> dict[str, dict]:
        """Per issuing CA: certificates good (unexpired), revoked (unexpired), expired, and the latest
        notAfter of its unexpired certificates (None when every one has expired)."""
        c = CertificateRow
        out: dict[str, dict] = {}

        def entry(issuer: str) -> dict:
            return out.setdefault(issuer, {"good": 0, "revoked": 0, "expired": 0, "last_not_after": None})
        with self.db.read() as s:
            for issuer, status, count, last in s.exec(
                    sa.select(c.issuer, c.status, sa.func.count(), sa.func.max(c.not_after))
                    .where(c.not_after > now).group_by(c.issuer, c.status)):
                e = entry(issuer)
                e["good" if status == "good" else "revoked"] += count
                if e["last_not_after"] is None or utc(last) > e["last_not_after"]:
                    e["last_not_after"] = utc(last)
            for issuer, count in s.exec(sa.select(c.issuer, sa.func.count()).where(c.not_after <= now)
                                        .group_by(c.issuer)):
                entry(issuer)["expired"] += count
        return out

    def revoked_cas(self) -> list[tuple[str, dt.datetime, str]]:
        """(serial, revoked at, reason) of every revoked CA certificate: the root CRL's entries."""
        with self.db.read() as s:
            rows = s.exec(select(CaCertificateRow).where(CaCertificateRow.status == "revoked"))
            return [(r.serial, utc(r.revoked_at), r.revocation_reason or "unspecified") for r in rows]

    # -- issuance ----------------------------------------------------------------------------

    def unfinished_reservations(self, older_than: dt.datetime) -> list[Reservation]:
        with self.db.read() as s:
            rows = s.exec(select(SerialReservationRow)
                          .where(SerialReservationRow.state == "reserved",
                                 SerialReservationRow.reserved_at <= older_than)
                          .order_by(SerialReservationRow.reserved_at))
            return [_reservation(r) for r in rows]

    def reservation(self, serial: str) -> Reservation | None:
        with self.db.read() as s:
            row = s.get(SerialReservationRow, serial)
            return _reservation(row) if row else None

    # -- certificates ------------------------------------------------------------------------

    def certificate(self, serial: str) -> CertificateRecord | None:
        with self.db.read() as s:
            row = s.get(CertificateRow, serial)
            return _certificate(row, s.get(RevocationRow, serial)) if row else None

    def certificates(self, *, status: str | None = None, policy: str | None = None,
                     device_id: str | None = None, limit: int | None = None,
                     after: tuple[dt.datetime, str] | None = None) -> list[CertificateRecord]:
        """In order of issue; ``after``: only those after (issued_at, serial), a page's last."""
        with self.db.read() as s:
            query = select(CertificateRow, RevocationRow).join(
                RevocationRow, RevocationRow.serial == CertificateRow.serial, isouter=True).where(
                after_key(CertificateRow.issued_at, CertificateRow.serial, after))
            if status:
                query = query.where(CertificateRow.status == status)
            if policy:
                query = query.where(CertificateRow.policy == policy)
            if device_id:
                query = query.where(CertificateRow.device_id == device_id)
            query = query.order_by(CertificateRow.issued_at, CertificateRow.serial).limit(limit)
            return [_certificate(c, r) for c, r in s.exec(query)]

    def station_scope(self, serial: str) -> StationScope | None:
        """The scope recorded with a station certificate (None: it was given none)."""
        with self.db.reading() as c:
            row = c.execute(sa.select(SCOPES.c.policies, SCOPES.c.devices).where(SCOPES.c.serial == serial)).first()
        return None if row is None else StationScope(tuple(json.loads(row.policies)), row.devices)

    def operator_role(self, serial: str) -> str | None:
        """The role recorded with an operator's certificate (None: it is not an operator's)."""
        with self.db.reading() as c:
            return c.execute(sa.select(ROLES.c.role).where(ROLES.c.serial == serial)).scalar()

    def current_certificates(self, policy: str, device_ids: list[str]) -> dict[str, str]:
        """device id -> serial of its current certificate of ``policy`` (good and not renewed), for
        those of ``device_ids`` that have one (500 ids per query)."""
        out: dict[str, str] = {}
        with self.db.reading() as c:
            for start in range(0, len(device_ids), 500):
                rows = c.execute(sa.select(CERTIFICATES.c.device_id, CERTIFICATES.c.serial).where(
                    CERTIFICATES.c.policy == policy, CERTIFICATES.c.status == "good",
                    CERTIFICATES.c.superseded_by.is_(None),
                    CERTIFICATES.c.device_id.in_(device_ids[start:start + 500])))
                out.update((d, s) for d, s in rows)
        return out

    def revoke(self, serial: str, reason: str, at: dt.datetime, actor: str,
               messages_for: Callable[[CertificateRecord], list[OutboxMessage]]) -> CertificateRecord:
        """Mark revoked, record the reason, audit it and queue the relying-party updates: one
        transaction. keyCompromise also blocks the key and revokes every other good certificate
        with it, in the same transaction (each with its own audit event and updates)."""
        with self.db.write() as s:
            row = s.get(CertificateRow, serial)
            if row is None:
                raise DeviceCAError(Kind.NOT_FOUND, f"no certificate with serial {serial}")
            if row.status == "revoked":
                raise DeviceCAError(Kind.CONFLICT, f"certificate {serial} is already revoked")
            rows = [row]
            if reason == "keyCompromise" and row.spki_sha256:
                if s.get(BlockedKeyRow, row.spki_sha256) is None:
                    s.add(BlockedKeyRow(spki_sha256=row.spki_sha256, serial=serial, blocked_at=at, actor=actor))
                rows += s.exec(select(CertificateRow).where(CertificateRow.spki_sha256 == row.spki_sha256,
                                                            CertificateRow.status == "good",
                                                            CertificateRow.serial != serial)).all()
            records = []
            for r in rows:
                r.status = "revoked"
                s.add(r)
                revocation = RevocationRow(serial=r.serial, reason=reason, revoked_at=at, actor=actor)
                s.add(revocation)
                s.flush()
                records.append(_certificate(r, revocation))
                mark_crl_dirty(s, r.issuer)
                details = {"reason": reason} if r is row else {"reason": reason, "same_key_as": serial}
                audit.append(s, AuditEvent(action="certificate.revoked", actor=actor, at=at, serial=r.serial,
                                           device_id=r.device_id, details=details))
                _enqueue(s, messages_for(records[-1]), at)
            return records[0]

    def blocked_keys(self) -> list[tuple[str, str, dt.datetime, str]]:
        """(SHA-256 of the SubjectPublicKeyInfo, serial that blocked it, when, by whom), oldest first."""
        with self.db.read() as s:
            return [(r.spki_sha256, r.serial, utc(r.blocked_at), r.actor)
                    for r in s.exec(select(BlockedKeyRow).order_by(BlockedKeyRow.blocked_at))]

    def retire_device(self, device_id: str, at: dt.datetime, actor: str, revoked: int) -> None:
        with self.db.transaction() as c:
            done = c.execute(sa.update(DEVICES).where(DEVICES.c.device_id == device_id)
                             .values(status="decommissioned", updated_at=at))
            if done.rowcount != 1:
                raise DeviceCAError(Kind.NOT_FOUND, f"no device {device_id!r}")
            audit.append(c, AuditEvent(action="device.decommissioned", actor=actor, at=at, device_id=device_id,
                                       details={"revoked": revoked}))

    def retired_devices(self, device_id: str | None = None) -> frozenset[str]:
        """Device ids that were decommissioned (and not enrolled again since)."""
        query = sa.select(DEVICES.c.device_id).where(DEVICES.c.status == "decommissioned")
        if device_id is not None:
            query = query.where(DEVICES.c.device_id == device_id)
        with self.db.reading() as c:
            return frozenset(c.execute(query).scalars())

    # -- audit ---------------------------------------------------------------------------------

    def verify_audit(self, expect_head: tuple[int, str] | None = None) -> tuple[AuditReport, str]:
        """The chain's report and its head as ``SEQ:HASH`` (see audit.verify)."""
        with self.db.read() as s:
            return audit.verify(s, expect_head)

    def append_audit(self, event: AuditEvent) -> int:
        """One event that goes with no other write (``backup.created``); its sequence number."""
        with self.db.transaction() as c:
            return audit.append(c, event)

    def audit_head(self) -> tuple[int, str]:
        with self.db.read() as s:
            return audit.head(s)

    def audit_checkpoints(self) -> list[AuditCheckpoint]:
        with self.db.read() as s:
            return audit.checkpoints(s)

    def newest_audit_checkpoint(self) -> AuditCheckpoint | None:
        with self.db.read() as s:
            return audit.newest_checkpoint(s)

    def audit_event_hashes(self, seqs: set[int]) -> dict[int, str]:
        with self.db.read() as s:
            return audit.event_hashes(s, seqs)

    def add_audit_checkpoint(self, checkpoint: AuditCheckpoint) -> None:
        with self.db.transaction() as c:
            c.execute(sa.insert(AuditCheckpointRow.__table__).values(
                seq=checkpoint.seq, head_hash=checkpoint.head_hash, at=checkpoint.at, signature=checkpoint.signature))

    def outbox(self, state: str | None = "pending") -> list[OutboxMessage]:
        with self.db.read() as s:
            query = select(OutboxRow).order_by(OutboxRow.id)
            if state:
                query = query.where(OutboxRow.state == state)
            return [OutboxMessage(topic=r.topic, device_id=r.device_id, payload=json.loads(r.payload))
                    for r in s.exec(query)]


def _enqueue(connection, messages: list[OutboxMessage], at: dt.datetime) -> None:
    if messages:
        connection.execute(INSERT_OUTBOX, [outbox_row(m, at) for m in messages])


def _ca(r: CaCertificateRow) -> CaRecord:
    return CaRecord(name=r.name, key_label=r.key_label, key_type=r.key_type, der=bytes(r.der), serial=r.serial,
                    not_after=utc(r.not_after), created_at=utc(r.created_at), status=r.status,
                    revoked_at=utc(r.revoked_at), revocation_reason=r.revocation_reason)


def _reservation(r: SerialReservationRow) -> Reservation:
    return Reservation(serial=r.serial, issuer=r.issuer, device_id=r.device_id, policy=r.policy,
                       tbs_sha256=r.tbs_sha256, state=r.state, reserved_at=utc(r.reserved_at))


def _certificate(r: CertificateRow, revocation: RevocationRow | None) -> CertificateRecord:
    return CertificateRecord(
        serial=r.serial, issuer=r.issuer, device_id=r.device_id, policy=r.policy, subject=r.subject,
        status=r.status, not_before=utc(r.not_before), not_after=utc(r.not_after), fingerprint=r.fingerprint,
        der=bytes(r.der), issued_at=utc(r.issued_at),
        revoked_at=utc(revocation.revoked_at) if revocation else None,
        revocation_reason=revocation.reason if revocation else None, superseded_by=r.superseded_by,
        spki_sha256=r.spki_sha256)
