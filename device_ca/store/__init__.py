from device_ca.store.records import (AuditEvent, AuditReport, CaRecord, CertificateRecord, OutboxMessage,
                                     Reservation)
from device_ca.store.repo import SerialInUse, Store

__all__ = ["AuditEvent", "AuditReport", "CaRecord", "CertificateRecord", "OutboxMessage", "Reservation",
           "SerialInUse", "Store"]
