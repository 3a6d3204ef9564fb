"""Bootstrap tokens and pending enrollment requests (the EST side of the store)."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlmodel import select

from device_ca.errors import DeviceCAError, Kind
from device_ca.store import audit
from device_ca.store.db import Database, after_key
from device_ca.store.records import AuditEvent, BootstrapToken, PendingRequest, utc
from device_ca.store.tables import BootstrapTokenRow, CertificateRow, PendingRequestRow

CLAIM_SECONDS = 120


class EnrollmentRepo:
    def __init__(self, db: Database):
        self.db = db

    # -- bootstrap tokens ------------------------------------------------------------------

    def add_token(self, token_id: str, secret_sha256: str, device_id: str, policy: str, created_at: dt.datetime,
                  expires_at: dt.datetime, actor: str) -> None:
        with self.db.write() as s:
            s.add(BootstrapTokenRow(id=token_id, secret_sha256=secret_sha256, device_id=device_id, policy=policy,
                                    created_at=created_at, expires_at=expires_at, created_by=actor))
            audit.append(s, AuditEvent(action="token.created", actor=actor, at=created_at, device_id=device_id,
                                       details={"token_id": token_id, "policy": policy,
                                                "expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")}))

    def find_token(self, secret_sha256: str) -> BootstrapToken | None:
        with self.db.direct_read() as c:
            row = c.execute(_FIND_TOKEN, {"digest": secret_sha256}).first()
            return _token(row) if row else None

    def release_token(self, token_id: str) -> None:
        table = BootstrapTokenRow.__table__
        with self.db.transaction() as c:
            c.execute(sa.update(table).where(table.c.id == token_id, table.c.used_at.is_(None))
                      .values(claimed_until=None))

    def tokens(self, device_id: str | None = None, policy: str | None = None, *, limit: int | None = None,
               after: tuple[dt.datetime, str] | None = None) -> list[BootstrapToken]:
        """Oldest first; ``after``: only those after (created_at, id), a page's last."""
        with self.db.read() as s:
            query = (select(BootstrapTokenRow).order_by(BootstrapTokenRow.created_at, BootstrapTokenRow.id)
                     .where(after_key(BootstrapTokenRow.created_at, BootstrapTokenRow.id, after)).limit(limit))
            if device_id:
                query = query.where(BootstrapTokenRow.device_id == device_id)
            if policy:
                query = query.where(BootstrapTokenRow.policy == policy)
            return [_token(r) for r in s.exec(query)]

    def withdraw_token(self, token_id: str, actor: str, at: dt.datetime) -> BootstrapToken:
        """Withdraw an unused token, with its audit event, in one transaction. A request that has
        claimed it meanwhile can no longer record its certificate (USE_TOKEN wants it not withdrawn)."""
        with self.db.write() as s:
            row = s.get(BootstrapTokenRow, token_id)
            if row is None:
                raise DeviceCAError(Kind.NOT_FOUND, f"no bootstrap token {token_id}")
            if row.used_at is not None:
                raise DeviceCAError(Kind.CONFLICT, f"token {token_id} was already used (certificate {row.serial})")
            if row.withdrawn_at is not None:
                raise DeviceCAError(Kind.CONFLICT, f"token {token_id} was already withdrawn")
            row.withdrawn_at, row.withdrawn_by = at, actor
            s.add(row)
            s.flush()
            audit.append(s, AuditEvent(action="token.withdrawn", actor=actor, at=at, device_id=row.device_id,
                                       details={"token_id": row.id, "policy": row.policy}))
            return _token(row)

    # -- pending requests ------------------------------------------------------------------

    def pending_for(self, policy: str, device_id: str, csr_sha256: str) -> PendingRequest | None:
        with self.db.read() as s:
            row = s.exec(select(PendingRequestRow).where(
                PendingRequestRow.policy == policy, PendingRequestRow.device_id == device_id,
                PendingRequestRow.csr_sha256 == csr_sha256)).first()
            return _pending(row) if row else None

    def add_pending(self, request: PendingRequest, actor: str) -> PendingRequest:
        """Store a new pending request; if the same one is already there, return that one."""
        try:
            with self.db.write() as s:
                s.add(PendingRequestRow(**request.__dict__))
                s.flush()
                audit.append(s, AuditEvent(action="enrollment.pending", actor=actor, at=request.created_at,
                                           device_id=request.device_id,
                                           details={"request": request.id, "policy": request.policy,
                                                    "method": request.method, "csr_sha256": request.csr_sha256}))
            return request
        except sa.exc.IntegrityError:
            existing = self.pending_for(request.policy, request.device_id, request.csr_sha256)
            if existing is None:
                raise
            return existing

    def pending(self, state: str | None = "pending", *, limit: int | None = None,
                after: tuple[dt.datetime, str] | None = None) -> list[PendingRequest]:
        """Oldest first; ``after``: only those after (created_at, id), a page's last."""
        with self.db.read() as s:
            query = (select(PendingRequestRow).order_by(PendingRequestRow.created_at, PendingRequestRow.id)
                     .where(after_key(PendingRequestRow.created_at, PendingRequestRow.id, after)).limit(limit))
            if state:
                query = query.where(PendingRequestRow.state == state)
            return [_pending(r) for r in s.exec(query)]

    def decide(self, request_id: str, approve: bool, actor: str, at: dt.datetime) -> PendingRequest:
        with self.db.write() as s:
            row = s.get(PendingRequestRow, request_id)
            if row is None:
                raise DeviceCAError(Kind.NOT_FOUND, f"no pending request {request_id}")
            if row.state != "pending":
                raise DeviceCAError(Kind.CONFLICT, f"request {request_id} is already {row.state}")
            row.state = "approved" if approve else "rejected"
            row.decided_at, row.decided_by = at, actor
            s.add(row)
            s.flush()
            audit.append(s, AuditEvent(action=f"enrollment.{row.state}", actor=actor, at=at, device_id=row.device_id,
                                       details={"request": row.id, "policy": row.policy}))
            return _pending(row)

    # -- rotation ------------------------------------------------------------------------------

    def due_for_supersede(self, now: dt.datetime) -> list[str]:
        with self.db.read() as s:
            rows = s.exec(select(CertificateRow.serial).where(
                CertificateRow.status == "good", CertificateRow.revoke_after.is_not(None),
                CertificateRow.revoke_after <= now))
            return list(rows)


_TOKENS = BootstrapTokenRow.__table__
_CLAIM = (sa.update(_TOKENS)
          .where(_TOKENS.c.id == sa.bindparam("token_id"), _TOKENS.c.used_at.is_(None),
                 _TOKENS.c.withdrawn_at.is_(None), _TOKENS.c.expires_at > sa.bindparam("now"),
                 sa.or_(_TOKENS.c.claimed_until.is_(None), _TOKENS.c.claimed_until < sa.bindparam("now")))
          .values(claimed_until=sa.bindparam("until")))
_FIND_TOKEN = sa.select(_TOKENS).where(_TOKENS.c.secret_sha256 == sa.bindparam("digest"))
_CLAIMED = sa.select(_TOKENS.c.claimed_until).where(
    _TOKENS.c.id == sa.bindparam("token_id"), _TOKENS.c.used_at.is_(None), _TOKENS.c.withdrawn_at.is_(None),
    _TOKENS.c.expires_at > sa.bindparam("now"), _TOKENS.c.claimed_until >= sa.bindparam("now"))


def claim(connection, token_id: str, now: dt.datetime) -> bool:
    """Atomically reserve an unused, unwithdrawn, unexpired, unclaimed token for one signing attempt."""
    result = connection.execute(_CLAIM, {"token_id": token_id, "now": now,
                                         "until": now + dt.timedelta(seconds=CLAIM_SECONDS)})
    return result.rowcount == 1


def claimed(connection, token_id: str, now: dt.datetime) -> bool:
    """Whether a token that could not be claimed is otherwise good and only held by another attempt
    (one in flight, or one an outage cut off before it could give the claim back)."""
    return connection.execute(_CLAIMED, {"token_id": token_id, "now": now}).first() is not None



def _token(r: BootstrapTokenRow) -> BootstrapToken:
    return BootstrapToken(id=r.id, device_id=r.device_id, policy=r.policy, created_at=utc(r.created_at),
                          expires_at=utc(r.expires_at), used_at=utc(r.used_at), serial=r.serial,
                          created_by=r.created_by, withdrawn_at=utc(r.withdrawn_at), withdrawn_by=r.withdrawn_by)


def _pending(r: PendingRequestRow) -> PendingRequest:
    return PendingRequest(id=r.id, policy=r.policy, device_id=r.device_id, csr_sha256=r.csr_sha256,
                          csr_der=bytes(r.csr_der), method=r.method, state=r.state, created_at=utc(r.created_at),
                          decided_at=utc(r.decided_at), decided_by=r.decided_by, serial=r.serial)
