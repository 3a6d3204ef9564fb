"""The issuing path's statements (store/issuance.py's two transactions, batches.py's bookkeeping).

Built once: a statement built per call costs SQLAlchemy ~150 µs of cache-key work on every
execution; these take ~30 µs.
"""
from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from device_ca.store.tables import (BatchItemRow, BlockedKeyRow, BootstrapTokenRow, CaCertificateRow, CertificateRow, DeviceRow,
                                    OperatorRoleRow, OutboxRow, PendingRequestRow, SerialReservationRow,
                                    StationScopeRow)

RESERVATIONS = SerialReservationRow.__table__
DEVICES = DeviceRow.__table__
CERTIFICATES = CertificateRow.__table__
BLOCKED = BlockedKeyRow.__table__
CA_STATUS = sa.select(CaCertificateRow.__table__.c.status).where(CaCertificateRow.__table__.c.name == sa.bindparam("b_ca"))

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
SCOPES = StationScopeRow.__table__
INSERT_SCOPE = sa.insert(SCOPES)
ROLES = OperatorRoleRow.__table__
INSERT_ROLE = sa.insert(ROLES)
ITEMS = BatchItemRow.__table__
_TOKENS = BootstrapTokenRow.__table__
_PENDING = PendingRequestRow.__table__

# Only from the state this run read: pending, or reserved under the serial it gave up. Two runs of
# one batch at once therefore cannot both reserve an item (the second one's chunk is refused).
RESERVE_ITEM = (sa.update(ITEMS)
                .where(ITEMS.c.batch_id == sa.bindparam("b_batch"), ITEMS.c.device_id == sa.bindparam("b_device"),
                       sa.or_(ITEMS.c.state == "pending",
                              sa.and_(ITEMS.c.state == "reserved", ITEMS.c.serial == sa.bindparam("b_previous"))))
                .values(state="reserved", serial=sa.bindparam("b_serial"), not_before=sa.bindparam("b_not_before"),
                        not_after=sa.bindparam("b_not_after")))
ABANDON = (sa.update(RESERVATIONS)
           .where(RESERVATIONS.c.serial == sa.bindparam("b_serial"), RESERVATIONS.c.state == "reserved")
           .values(state="abandoned"))
ITEM_ISSUED = (sa.update(ITEMS)
               .where(ITEMS.c.batch_id == sa.bindparam("b_batch"), ITEMS.c.device_id == sa.bindparam("b_device"),
                      ITEMS.c.state == "reserved", ITEMS.c.serial == sa.bindparam("b_serial"))
               .values(state="issued"))
USE_TOKEN = (sa.update(_TOKENS).where(_TOKENS.c.id == sa.bindparam("token_id"), _TOKENS.c.used_at.is_(None),
                                      _TOKENS.c.withdrawn_at.is_(None))
             .values(used_at=sa.bindparam("used"), serial=sa.bindparam("issued_serial"), claimed_until=None))
ISSUE_PENDING = (sa.update(_PENDING)
                 .where(_PENDING.c.id == sa.bindparam("pending_id"), _PENDING.c.state == "approved")
                 .values(state="issued", serial=sa.bindparam("issued_serial")))
SUPERSEDE = (sa.update(CERTIFICATES)
             .where(CERTIFICATES.c.serial == sa.bindparam("old_serial"), CERTIFICATES.c.status == "good",
                    CERTIFICATES.c.superseded_by.is_(None))
             .values(superseded_by=sa.bindparam("new_serial"),
                     revoke_after=sa.func.coalesce(CERTIFICATES.c.revoke_after,
                                                   sa.bindparam("revoke_after", type_=sa.DateTime(timezone=True)))))


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
