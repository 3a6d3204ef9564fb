"""Revocation (RFC 5280 §5.3.1 reason codes) as one transaction with its audit and outbox rows."""
from __future__ import annotations

from cryptography import x509

from device_ca.errors import malformed

# RFC 5280 reason names an operator may use. certificateHold is left out on purpose (a hold
# that is later released makes "revoked" reversible, which no relying party here expects);
# removeFromCRL only exists in delta CRLs.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}


def check_reason(reason: str) -> str:
    if reason not in REASONS:
        raise malformed(f"unknown revocation reason {reason!r} (one of: {', '.join(REASONS)})")
    return reason
