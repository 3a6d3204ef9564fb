"""SQLModel tables. They never leave ``device_ca.store``; the rest of the code sees records.

Serial numbers are stored as lower-case hex without separators. ``serial_reservations`` is the
register of every serial ever handed to a signer: its primary key is what makes a repeated
random serial fail, and a reservation without a certificate is what ``reconcile`` reports.
"""
from __future__ import annotations

import datetime as dt
from typing import Optional

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


def _ts(nullable: bool = False, index: bool = False) -> sa.Column:
    return sa.Column(sa.DateTime(timezone=True), nullable=nullable, index=index)


class CaCertificateRow(SQLModel, table=True):
    __tablename__ = "ca_certificates"
    name: str = Field(primary_key=True, max_length=64)
    key_label: str = Field(max_length=128)
    key_type: str = Field(max_length=32)
    der: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    serial: str = Field(max_length=40)
    not_after: dt.datetime = Field(sa_column=_ts())
    created_at: dt.datetime = Field(sa_column=_ts())
    # active | revoked: an issuing CA revoked by the root (listed in the root's CRL) issues nothing
    status: str = Field(default="active", max_length=16)
    revoked_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))
    revocation_reason: Optional[str] = Field(default=None, max_length=32)


class DeviceRow(SQLModel, table=True):
    __tablename__ = "devices"
    device_id: str = Field(primary_key=True, max_length=128)
    policy: str = Field(max_length=64, index=True)
    status: str = Field(default="active", max_length=16)
    created_at: dt.datetime = Field(sa_column=_ts())
    updated_at: dt.datetime = Field(sa_column=_ts())


class SerialReservationRow(SQLModel, table=True):
    __tablename__ = "serial_reservations"
    serial: str = Field(primary_key=True, max_length=40)
    issuer: str = Field(max_length=64)
    device_id: str = Field(max_length=128)
    policy: str = Field(max_length=64)
    tbs_sha256: str = Field(max_length=64)
    state: str = Field(default="reserved", max_length=16, index=True)
    reserved_at: dt.datetime = Field(sa_column=_ts())


class CertificateRow(SQLModel, table=True):
    __tablename__ = "certificates"
    # The expiry job's and the scrape's scans: good certificates by notAfter (ra/expiry.py).
    __table_args__ = (sa.Index("ix_certificates_status_not_after", "status", "not_after"),)
    serial: str = Field(primary_key=True, max_length=40, foreign_key="serial_reservations.serial")
    issuer: str = Field(max_length=64)
    device_id: str = Field(max_length=128, foreign_key="devices.device_id", index=True)
    policy: str = Field(max_length=64, index=True)
    subject: str = Field(max_length=1024)
    status: str = Field(default="good", max_length=16, index=True)
    not_before: dt.datetime = Field(sa_column=_ts())
    not_after: dt.datetime = Field(sa_column=_ts(index=True))
    fingerprint: str = Field(max_length=64, unique=True)
    der: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    issued_at: dt.datetime = Field(sa_column=_ts())
    # Re-enrollment: the newer certificate, and when this one is revoked as superseded.
    superseded_by: Optional[str] = Field(default=None, max_length=40)
    revoke_after: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True, index=True))
    # SHA-256 of the SubjectPublicKeyInfo: which certificates share a key (blocked keys, one key per device)
    spki_sha256: Optional[str] = Field(default=None, max_length=64, index=True)
    # When the expiry job handled this good certificate's passing of notAfter (audit, Keycloak): once.
    expired_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))


class BlockedKeyRow(SQLModel, table=True):
    """Keys revoked for keyCompromise: never certified again, on any path."""
    __tablename__ = "blocked_keys"
    spki_sha256: str = Field(primary_key=True, max_length=64)
    serial: str = Field(max_length=40)             # the certificate whose revocation blocked it
    blocked_at: dt.datetime = Field(sa_column=_ts())
    actor: str = Field(max_length=128)


class StationScopeRow(SQLModel, table=True):
    """What a station certificate authorises on the batch API (recorded with the certificate)."""
    __tablename__ = "station_scopes"
    serial: str = Field(primary_key=True, max_length=40)
    policies: str = Field(sa_column=sa.Column(sa.Text, nullable=False))      # JSON list of policy names
    devices: Optional[str] = Field(default=None, max_length=256)             # regular expression, whole id


class OperatorRoleRow(SQLModel, table=True):
    """The role an operator's certificate (policy admin) was issued with (recorded with the certificate)."""
    __tablename__ = "operator_roles"
    serial: str = Field(primary_key=True, max_length=40)
    role: str = Field(max_length=32)


class RevocationRow(SQLModel, table=True):
    __tablename__ = "revocations"
    serial: str = Field(primary_key=True, max_length=40, foreign_key="certificates.serial")
    reason: str = Field(max_length=32)
    revoked_at: dt.datetime = Field(sa_column=_ts())
    actor: str = Field(max_length=128)


class AuditEventRow(SQLModel, table=True):
    __tablename__ = "audit_events"
    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: dt.datetime = Field(sa_column=_ts())
    action: str = Field(max_length=64, index=True)
    actor: str = Field(max_length=128)
    serial: Optional[str] = Field(default=None, max_length=40, index=True)
    device_id: Optional[str] = Field(default=None, max_length=128)
    details: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditDeliveryRow(SQLModel, table=True):
    """A receiver's cursor in the audit chain (``webhook``): the last event it confirmed with a
    2xx, moved forward only; what follows it is delivered next, after any restart."""

    __tablename__ = "audit_deliveries"
    name: str = Field(primary_key=True, max_length=64)
    seq: int = Field(default=0)
    hash: str = Field(max_length=64)
    delivered_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))
    failures: int = Field(default=0)
    last_error: Optional[str] = Field(default=None, max_length=1024)
    last_attempt_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))


class AuditHeadRow(SQLModel, table=True):
    """The chain's head, locked for every append; a truncated tail no longer matches it."""

    __tablename__ = "audit_head"
    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int
    hash: str = Field(max_length=64)


class AuditCheckpointRow(SQLModel, table=True):
    """The chain's head (event ``seq`` with ``head_hash``) signed at ``at`` by the token's audit key:
    a chain rewritten afterwards no longer matches a checkpoint it cannot sign again."""

    __tablename__ = "audit_checkpoints"
    id: Optional[int] = Field(default=None, primary_key=True)
    seq: int = Field(index=True)
    head_hash: str = Field(max_length=64)
    at: dt.datetime = Field(sa_column=_ts())
    signature: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))


class OutboxRow(SQLModel, table=True):
    __tablename__ = "outbox"
    id: Optional[int] = Field(default=None, primary_key=True)
    created_at: dt.datetime = Field(sa_column=_ts())
    topic: str = Field(max_length=64, index=True)
    device_id: str = Field(max_length=128)
    payload: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    state: str = Field(default="pending", max_length=16, index=True)
    attempts: int = 0
    last_error: Optional[str] = Field(default=None, max_length=1024)
    next_attempt_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))
    applied_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))
    outcome: Optional[str] = Field(default=None, max_length=64)


class LeaseRow(SQLModel, table=True):
    """A named lease: one holder at a time across threads, processes and nodes (the periodic jobs,
    the Keycloak outbox drainer, a running batch). A released lease keeps its row, expired."""

    __tablename__ = "leases"
    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: dt.datetime = Field(sa_column=_ts())
    acquired_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))


class LeaseHistoryRow(SQLModel, table=True):
    """Each time a lease changed hands: who took it, when, and until when the one before held it."""

    __tablename__ = "lease_history"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, index=True)
    holder: str = Field(max_length=128)
    acquired_at: dt.datetime = Field(sa_column=_ts())
    previous_holder: Optional[str] = Field(default=None, max_length=128)
    previous_expires_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))


class RateBucketRow(SQLModel, table=True):
    """A client's token bucket shared by every node (PostgreSQL: an UNLOGGED table; a crash forgets
    the buckets, which only gives clients a full bucket again). ``at``: the database's clock, in
    seconds since the epoch, so the nodes' clocks do not matter."""

    __tablename__ = "rate_buckets"
    key: str = Field(primary_key=True, max_length=64)
    tokens: float
    at: float
    allowed: bool = True


class BootstrapTokenRow(SQLModel, table=True):
    """A one-time EST credential. Only the SHA-256 of the secret is kept; the secret is shown once.

    ``claimed_until`` lets exactly one of several racing requests proceed to signing; the token
    is marked used in the transaction that records the certificate. A token withdrawn by an
    operator (``withdrawn_at``) is refused like a wrong one, also by a claim or a record in flight.
    """

    __tablename__ = "bootstrap_tokens"
    id: str = Field(primary_key=True, max_length=32)
    secret_sha256: str = Field(max_length=64, unique=True)
    device_id: str = Field(max_length=128, index=True)
    policy: str = Field(max_length=64)
    created_at: dt.datetime = Field(sa_column=_ts())
    expires_at: dt.datetime = Field(sa_column=_ts())
    created_by: str = Field(max_length=128)
    claimed_until: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))
    used_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))
    serial: Optional[str] = Field(default=None, max_length=40)
    withdrawn_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))
    withdrawn_by: Optional[str] = Field(default=None, max_length=128)


class PendingRequestRow(SQLModel, table=True):
    """An enrollment waiting for an operator (policies with require_approval)."""

    __tablename__ = "pending_requests"
    __table_args__ = (sa.UniqueConstraint("policy", "device_id", "csr_sha256", name="uq_pending_request"),)
    id: str = Field(primary_key=True, max_length=32)
    policy: str = Field(max_length=64)
    device_id: str = Field(max_length=128)
    csr_sha256: str = Field(max_length=64)
    csr_der: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    method: str = Field(max_length=32)
    state: str = Field(default="pending", max_length=16, index=True)
    created_at: dt.datetime = Field(sa_column=_ts())
    decided_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))
    decided_by: Optional[str] = Field(default=None, max_length=128)
    serial: Optional[str] = Field(default=None, max_length=40)


class CrlRow(SQLModel, table=True):
    """Every CRL signed, per CA by number (each CA has its own number sequence); the newest of a CA
    is the one served and published."""

    __tablename__ = "crls"
    ca: str = Field(primary_key=True, max_length=64)
    number: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    this_update: dt.datetime = Field(sa_column=_ts())
    next_update: dt.datetime = Field(sa_column=_ts())
    entries: int
    der: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))


class CrlStateRow(SQLModel, table=True):
    """The CRL number register (numbers are reserved before signing, never reused) and whether a
    revocation since the last CRL asks for a new one."""

    __tablename__ = "crl_state"
    ca: str = Field(primary_key=True, max_length=64)
    last_number: int = 0
    dirty: bool = True


class OcspResponderRow(SQLModel, table=True):
    """Delegated OCSP responder certificates; their keys are on the token under ``key_label``."""

    __tablename__ = "ocsp_responders"
    id: Optional[int] = Field(default=None, primary_key=True)
    ca: str = Field(max_length=64)
    key_label: str = Field(max_length=128)
    serial: str = Field(max_length=40)
    der: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    not_after: dt.datetime = Field(sa_column=_ts())
    created_at: dt.datetime = Field(sa_column=_ts())


class OcspResponseRow(SQLModel, table=True):
    """Pre-signed OCSP answers (SHA-1 CertID, no nonce) for issued certificates, one per serial."""

    __tablename__ = "ocsp_responses"
    serial: str = Field(primary_key=True, max_length=40, foreign_key="certificates.serial")
    status: str = Field(max_length=16)
    responder_id: int = Field(foreign_key="ocsp_responders.id")
    this_update: dt.datetime = Field(sa_column=_ts(index=True))
    next_update: dt.datetime = Field(sa_column=_ts())
    der: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))


class BatchRow(SQLModel, table=True):
    """A manufacturing batch: one certificate per item at most, resumable (``device-ca bulk issue``)."""

    __tablename__ = "batches"
    id: str = Field(primary_key=True, max_length=64)
    policy: str = Field(max_length=64)
    input_sha256: str = Field(max_length=64)
    items: int
    keygen: bool = False
    secret_sha256: Optional[str] = Field(default=None, max_length=64)   # scrypt of the keygen secret; never the secret
    # open (a CLI run, or a stopped API batch) | queued | running (API batches) | done
    state: str = Field(default="open", max_length=16)
    created_at: dt.datetime = Field(sa_column=_ts())
    created_by: str = Field(max_length=128)
    finished_at: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))
    replaces: bool = False          # items of devices with a current certificate replace it


class BatchItemRow(SQLModel, table=True):
    """One device of a batch: pending -> reserved (serial and dates fixed) -> issued, or failed."""

    __tablename__ = "batch_items"
    __table_args__ = (sa.Index("ix_batch_items_batch_position", "batch_id", "position"),)
    batch_id: str = Field(primary_key=True, max_length=64, foreign_key="batches.id")
    device_id: str = Field(primary_key=True, max_length=128)
    position: int
    csr_sha256: Optional[str] = Field(default=None, max_length=64)
    state: str = Field(default="pending", max_length=16, index=True)
    serial: Optional[str] = Field(default=None, max_length=40)
    not_before: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))
    not_after: Optional[dt.datetime] = Field(default=None, sa_column=_ts(nullable=True))
    error: Optional[str] = Field(default=None, max_length=512)
    csr: Optional[bytes] = Field(default=None, sa_column=sa.Column(sa.LargeBinary, nullable=True))


class ServiceStateRow(SQLModel, table=True):
    """Small named facts about a service's last run, e.g. ``keycloak.sync``: its outcome and error."""

    __tablename__ = "service_state"
    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_column=sa.Column(sa.Text, nullable=False))      # JSON
    at: dt.datetime = Field(sa_column=_ts())
