from device_ca.store.issuance import Recorded, Reserved, SerialInUse
from device_ca.store.records import (AuditCheckpoint, AuditEvent, AuditReport, BootstrapToken, CaRecord, CertificateRecord,
                                     IssuanceLinks, OutboxEntry, OutboxMessage, PendingRequest, Reservation,
                                     StationScope)
from device_ca.store.repo import Store

__all__ = ["AuditCheckpoint", "AuditEvent", "AuditReport", "BootstrapToken", "IssuanceLinks", "PendingRequest", "CaRecord",
           "CertificateRecord", "OutboxEntry", "OutboxMessage", "Recorded", "Reservation", "Reserved", "SerialInUse",
           "StationScope", "Store"]
