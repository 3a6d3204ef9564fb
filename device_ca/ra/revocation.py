"""Revocation (RFC 5280 §5.3.1 reason codes) as one transaction with its audit and outbox rows."""
from __future__ import annotations

from device_ca.ca import crl
from device_ca.errors import malformed

REASONS = crl.REASONS     # RFC 5280 §5.3.1 names; certificateHold and removeFromCRL are left out


def check_reason(reason: str) -> str:
    if reason not in REASONS:
        raise malformed(f"unknown revocation reason {reason!r} (one of: {', '.join(REASONS)})")
    return reason
