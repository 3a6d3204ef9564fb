"""Certificate serial numbers (RFC 5280 §4.1.2.2, CA/B BR 7.1).

Positive, at most 20 octets, at least 64 bits from a CSPRNG. As boulder does: a one-octet
prefix 0x01..0x7f (so the DER INTEGER is positive without a leading zero and never shorter
than 18 octets) followed by 136 random bits: 18 octets in all.
"""
from __future__ import annotations

import secrets

RANDOM_BITS = 136
SERIAL_OCTETS = 1 + RANDOM_BITS // 8


def new_serial(prefix: int = 0x01) -> int:
    if not 0x01 <= prefix <= 0x7F:
        raise ValueError("serial prefix must be 0x01..0x7f")
    return (prefix << RANDOM_BITS) | secrets.randbits(RANDOM_BITS)


def to_hex(serial: int) -> str:
    return format(serial, "x").rjust(SERIAL_OCTETS * 2, "0")


def from_hex(text: str) -> int:
    """Parse an operator-supplied serial: hex, optional 0x, colons or spaces allowed."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "").replace(" ", "")
    if not cleaned or len(cleaned) > 40 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ValueError(f"not a hex serial: {text!r}")
    return int(cleaned, 16)
