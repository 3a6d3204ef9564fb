"""The issuing path's statements, shared by single issuance (repo.py) and bulk (batches.py).

Built once: a statement built per call costs SQLAlchemy ~150 µs of cache-key work on every
execution; these take ~30 µs.
"""
from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from device_ca.store.tables import CertificateRow, DeviceRow, OutboxRow, SerialReservationRow

RESERVATIONS = SerialReservationRow.__table__
DEVICES = DeviceRow.__table__
CERTIFICATES = CertificateRow.__table__

INSERT_RESERVATION = sa.insert(RESERVATIONS)
MARK_ISSUED = (sa.update(RESERVATIONS)
               .where(RESERVATIONS.c.serial == sa.bindparam("reserved_serial"), RESERVATIONS.c.state == "reserved")
               .values(state="issued"))
UPSERT_DEVICE = {
    name: (lambda insert: insert.on_conflict_do_update(
        index_elements=["device_id"], set_={"policy": insert.excluded.policy, "status": insert.excluded.status,
                                            "updated_at": insert.excluded.updated_at}))(dialect.insert(DEVICES))
    for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))}
INSERT_CERTIFICATE = sa.insert(CERTIFICATES)
INSERT_OUTBOX = sa.insert(OutboxRow.__table__)


def certificate_row(record) -> dict:
    """A CertificateRecord as the certificates row it is stored as."""
    return {k: v for k, v in record.__dict__.items() if k not in ("revoked_at", "revocation_reason", "superseded_by")}


def device_row(record) -> dict:
    """The devices row (for UPSERT_DEVICE) of the device a CertificateRecord was issued to."""
    return {"device_id": record.device_id, "policy": record.policy, "status": "active",
            "created_at": record.issued_at, "updated_at": record.issued_at}


def outbox_row(message, at) -> dict:
    """An OutboxMessage as the pending outbox row it is stored as."""
    return {"created_at": at, "topic": message.topic, "device_id": message.device_id,
            "payload": json.dumps(message.payload, sort_keys=True), "state": "pending", "attempts": 0}
