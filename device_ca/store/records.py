"""Plain records that cross the storage boundary (the rest of the code never sees a table)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field


def utc(value: dt.datetime | None) -> dt.datetime | None:
    """A time read back from either database as an aware UTC datetime: SQLite returns naive values,
    PostgreSQL aware ones in the session's time zone."""
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


@dataclass(frozen=True)
class CaRecord:
    name: str
    key_label: str
    key_type: str
    der: bytes
    serial: str
    not_after: dt.datetime
    created_at: dt.datetime
    # active | retired (an old generation whose certificates have all expired: it signs nothing more)
    # | revoked (by the root: an entry of the root's CRL)
    status: str = "active"
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    issuer: str
    device_id: str
    policy: str
    subject: str
    status: str
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint: str
    der: bytes
    issued_at: dt.datetime
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None
    superseded_by: str | None = None
    spki_sha256: str | None = None          # SHA-256 of its SubjectPublicKeyInfo (hex)


@dataclass(frozen=True)
class Reservation:
    serial: str
    issuer: str
    device_id: str
    policy: str
    tbs_sha256: str
    state: str
    reserved_at: dt.datetime


@dataclass(frozen=True)
class AuditEvent:
    """An event to append; ``seq`` and the hashes are assigned by the chain."""

    action: str
    actor: str
    at: dt.datetime
    serial: str | None = None
    device_id: str | None = None
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LoggedEvent:
    """An event as the chain holds it: ``details`` is the canonical JSON its hash covers."""

    seq: int
    at: dt.datetime
    action: str
    actor: str
    serial: str | None
    device_id: str | None
    details: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class DeliveryCursor:
    """How far a receiver of the audit events has confirmed (seq 0: nothing yet)."""

    seq: int
    hash: str
    delivered_at: dt.datetime | None
    failures: int                      # failed attempts since the last confirmed delivery
    last_error: str | None
    last_attempt_at: dt.datetime | None


@dataclass(frozen=True)
class OutboxMessage:
    topic: str
    device_id: str
    payload: dict


@dataclass(frozen=True)
class AuditCheckpoint:
    seq: int
    head_hash: str
    at: dt.datetime
    signature: bytes


@dataclass(frozen=True)
class AuditReport:
    events: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class BootstrapToken:
    id: str
    device_id: str
    policy: str
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None
    serial: str | None
    created_by: str | None = None
    withdrawn_at: dt.datetime | None = None
    withdrawn_by: str | None = None

    def state(self, now: dt.datetime) -> str:
        """``used``, ``withdrawn``, ``expired`` or ``open`` (may still enroll its device once)."""
        if self.used_at is not None:
            return "used"
        if self.withdrawn_at is not None:
            return "withdrawn"
        return "expired" if self.expires_at <= now else "open"


@dataclass(frozen=True)
class PendingRequest:
    id: str
    policy: str
    device_id: str
    csr_sha256: str
    csr_der: bytes
    method: str
    state: str
    created_at: dt.datetime
    decided_at: dt.datetime | None
    decided_by: str | None
    serial: str | None


@dataclass(frozen=True)
class StationScope:
    """What a station certificate's holder may issue on the batch API, as the operator decided when
    issuing it: these device policies and, if ``devices`` is set, only device ids it matches whole
    (a regular expression)."""

    policies: tuple[str, ...]
    devices: str | None = None

    def as_dict(self) -> dict:
        return {"policies": list(self.policies), "devices": self.devices}


@dataclass(frozen=True)
class IssuanceLinks:
    """What else the issuing transaction settles: a consumed token, a pending request, a superseded
    certificate, the scope recorded with a station certificate, the role recorded with an operator's."""

    token_id: str | None = None
    pending_id: str | None = None
    supersedes: str | None = None
    supersede_revoke_after: dt.datetime | None = None
    scope: StationScope | None = None
    role: str | None = None


@dataclass(frozen=True)
class OutboxEntry:
    """An outbox row as the drainer and ``keycloak status`` see it."""

    id: int
    created_at: dt.datetime
    topic: str
    device_id: str
    payload: dict
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: dt.datetime | None
    applied_at: dt.datetime | None
    outcome: str | None
