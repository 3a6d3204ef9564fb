"""Audit events out of the CA: ``device-ca audit export`` (JSON lines, CEF) and the webhook that
delivers every event to a SIEM (docs/audit-export.md)."""
