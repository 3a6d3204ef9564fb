"""The two durable transactions of issuance (boulder's SA side of the cycle): the reservation
(serial rows, intent audit events, a claimed bootstrap token, batch items reserved) committed
before anything is signed, and the recording (certificates, devices, reservations marked issued,
links settled, batch items issued, audit, outbox) committed after. Every issuing path of device-ca
writes through these two methods, one certificate or a chunk of a batch at a time; they run on
the DBAPI connection (``Database.direct``) with statements built once (issuance_sql)."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from device_ca.errors import DeviceCAError, Kind
from device_ca.store import audit
from device_ca.store.db import Database
from device_ca.store.enrollment import claim, claimed
from device_ca.store.issuance_sql import (ABANDON, BLOCKED, CA_STATUS, CERTIFICATES, INSERT_CERTIFICATE, INSERT_OUTBOX,
                                          INSERT_RESERVATION, INSERT_ROLE, INSERT_SCOPE, ISSUE_PENDING, ITEM_ISSUED, MARK_ISSUED, RESERVE_ITEM,
                                          SUPERSEDE, UPSERT_DEVICE, USE_TOKEN, certificate_row, device_row,
                                          outbox_row)
from device_ca.store.records import AuditEvent, CertificateRecord, IssuanceLinks, OutboxMessage, Reservation


class SerialInUse(Exception):
    """A drawn serial is already reserved: the caller draws again."""


@dataclass(frozen=True, slots=True)
class Reserved:
    """One certificate's reservation: its serial row, the intent's audit event and what else the
    reserving transaction settles (a bootstrap token claimed, a batch item reserved with its dates)."""
    reservation: Reservation
    event: AuditEvent
    claim_token: str | None = None
    batch_id: str | None = None
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    previous_serial: str | None = None     # a batch item's reservation that this one replaces


@dataclass(frozen=True, slots=True)
class Recorded:
    """One signed certificate with its audit event, relying-party messages and links."""
    certificate: CertificateRecord
    event: AuditEvent
    messages: tuple[OutboxMessage, ...] = ()
    links: IssuanceLinks | None = None
    batch_id: str | None = None


BLOCKED_KEY = "the key was revoked for keyCompromise and is blocked; make a new key"
SHARED_KEY = "the key is already certified for another device; each device has a key of its own"
_FEW_KEYS = 8
_KEY_BLOCKED = sa.select(BLOCKED.c.spki_sha256).where(BLOCKED.c.spki_sha256 == sa.bindparam("k_digest"))
_KEY_HOLDER = sa.select(CERTIFICATES.c.device_id).where(CERTIFICATES.c.spki_sha256 == sa.bindparam("k_digest"),
                                                        CERTIFICATES.c.device_id != sa.bindparam("k_device"))


class IssuanceRepo:
    def __init__(self, db: Database):
        self.db = db

    def key_refusals(self, keys: dict[str, str]) -> dict[str, str]:
        """device id -> why its key may not be certified, for the devices of ``keys`` (device id ->
        SHA-256 of the SubjectPublicKeyInfo) whose key is blocked (revoked for keyCompromise) or is
        certified for another device already."""
        if not keys:
            return {}
        if len(keys) <= _FEW_KEYS:                  # single issuance: statements built once (~20 µs each)
            out = {}
            with self.db.direct_read() as c:
                for device, digest in keys.items():
                    if c.execute(_KEY_BLOCKED, {"k_digest": digest}).first() is not None:
                        out[device] = BLOCKED_KEY
                    elif c.execute(_KEY_HOLDER, {"k_digest": digest, "k_device": device}).first() is not None:
                        out[device] = SHARED_KEY
            return out
        digests = sorted(set(keys.values()))
        with self.db.reading() as c:
            blocked = set(c.execute(sa.select(BLOCKED.c.spki_sha256).where(BLOCKED.c.spki_sha256.in_(digests)))
                          .scalars())
            holders: dict[str, set[str]] = {}
            for digest, device in c.execute(sa.select(CERTIFICATES.c.spki_sha256, CERTIFICATES.c.device_id)
                                            .where(CERTIFICATES.c.spki_sha256.in_(digests)).distinct()):
                holders.setdefault(digest, set()).add(device)
        out = {}
        for device, digest in keys.items():
            if digest in blocked:
                out[device] = BLOCKED_KEY
            elif holders.get(digest, set()) - {device}:
                out[device] = SHARED_KEY
        return out

    def reserve(self, reserved: list[Reserved], abandon: list[str] = ()) -> None:
        """Serials, intents, token claims and batch items in one transaction, before any signature;
        ``abandon``: reservations of an earlier run that can no longer be reproduced. SerialInUse
        when a drawn serial exists already (nothing is kept); UNAUTHORIZED when a token is taken."""
        if not reserved and not abandon:
            return
        try:
            with self.db.direct() as c:
                if abandon:
                    c.execute(ABANDON, [{"b_serial": s} for s in abandon])
                if not reserved:
                    return
                for ca in sorted({r.reservation.issuer for r in reserved}):
                    row = c.execute(CA_STATUS, {"b_ca": ca}).first()
                    if row is not None and row[0] != "active":
                        raise DeviceCAError(Kind.CA_UNAVAILABLE, f"the issuing CA {ca!r} is {row[0]}: it issues no "
                                            "more certificates; nothing was signed")
                for r in reserved:
                    if r.claim_token is not None and not claim(c, r.claim_token, r.reservation.reserved_at):
                        if claimed(c, r.claim_token, r.reservation.reserved_at):
                            # held by another attempt: its outcome decides; a device whose attempt an
                            # outage cut off comes back when the claim has lapsed, and is not told
                            # that its credentials are wrong (202 + Retry-After, RFC 7030 §4.2.3)
                            raise DeviceCAError(Kind.PENDING, "these bootstrap credentials are in use by "
                                                "another request; retry later")
                        raise DeviceCAError(Kind.UNAUTHORIZED,
                                            "invalid, expired or already used bootstrap credentials")
                c.execute(INSERT_RESERVATION, [r.reservation.__dict__ for r in reserved])
                items = [{"b_batch": r.batch_id, "b_device": r.reservation.device_id, "b_serial": r.reservation.serial,
                          "b_not_before": r.not_before, "b_not_after": r.not_after, "b_previous": r.previous_serial}
                         for r in reserved if r.batch_id is not None]
                if items and c.execute(RESERVE_ITEM, items).rowcount != len(items):
                    raise DeviceCAError(Kind.CONFLICT, f"batch {items[0]['b_batch']}: items changed state under "
                                        "this run (is another run of the same batch going on?)")
                audit.append_many(c, [r.event for r in reserved])
        except IntegrityError as exc:
            raise SerialInUse(exc) from exc

    def record(self, recorded: list[Recorded]) -> None:
        """Certificates, devices, reservations issued, links, batch items, audit and outbox in one
        transaction. CONFLICT when a link cannot be settled (token used, request not approved)."""
        if not recorded:
            return
        with self.db.direct() as c:
            done = c.execute(MARK_ISSUED, [{"reserved_serial": r.certificate.serial} for r in recorded])
            if done.rowcount != len(recorded):
                raise DeviceCAError(Kind.INTERNAL, "a serial is no longer reserved for issuance")
            c.execute(UPSERT_DEVICE[c.dialect.name], [device_row(r.certificate) for r in recorded])
            c.execute(INSERT_CERTIFICATE, [certificate_row(r.certificate) for r in recorded])
            for r in recorded:
                if r.links is not None:
                    _settle_links(c, r.links, r.certificate)
            items = [{"b_batch": r.batch_id, "b_device": r.certificate.device_id, "b_serial": r.certificate.serial}
                     for r in recorded if r.batch_id is not None]
            if items and c.execute(ITEM_ISSUED, items).rowcount != len(items):
                raise DeviceCAError(Kind.INTERNAL, f"batch {items[0]['b_batch']}: an item is no longer reserved")
            audit.append_many(c, [r.event for r in recorded])
            messages = [outbox_row(m, r.certificate.issued_at) for r in recorded for m in r.messages]
            if messages:
                c.execute(INSERT_OUTBOX, messages)


def _settle_links(c, links: IssuanceLinks, certificate: CertificateRecord) -> None:
    at, serial = certificate.issued_at, certificate.serial
    if links.token_id is not None:
        done = c.execute(USE_TOKEN, {"token_id": links.token_id, "used": at, "issued_serial": serial})
        if done.rowcount != 1:
            raise DeviceCAError(Kind.CONFLICT, "bootstrap token was already used or withdrawn")
    if links.pending_id is not None:
        done = c.execute(ISSUE_PENDING, {"pending_id": links.pending_id, "issued_serial": serial})
        if done.rowcount != 1:
            raise DeviceCAError(Kind.CONFLICT, "pending request is not approved")
    if links.supersedes is not None:
        done = c.execute(SUPERSEDE, {"old_serial": links.supersedes, "new_serial": serial,
                                     "revoke_after": links.supersede_revoke_after})
        if done.rowcount != 1:                          # renewed (or revoked) meanwhile: renewal stays linear
            raise DeviceCAError(Kind.CONFLICT, f"certificate {links.supersedes} was already renewed or revoked")
    if links.scope is not None:
        c.execute(INSERT_SCOPE, {"serial": serial, "policies": json.dumps(list(links.scope.policies)),
                                 "devices": links.scope.devices})
    if links.role is not None:
        c.execute(INSERT_ROLE, {"serial": serial, "role": links.role})
