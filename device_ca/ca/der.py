"""The few DER operations the signing paths need beyond cryptography's builders: wrap a
TBSCertificate / TBSCertList signed on the token into the signed structure, and splice entries
into a TBS that a builder made (RFC 5280 §4.1, §5.1; X.690 DER)."""
from __future__ import annotations

import datetime as _dt

from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from device_ca.errors import DeviceCAError, Kind

_UTC = _dt.timezone.utc


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element: tag, definite length (short or long form), content."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def time(when) -> bytes:
    """A certificate validity time (RFC 5280 §4.1.2.5): UTCTime through 2049, GeneralizedTime
    from 2050, in UTC with seconds and no fraction (a naive time is taken as UTC, as cryptography's
    builders do)."""
    when = when.replace(tzinfo=_UTC) if when.tzinfo is None else when.astimezone(_UTC)
    if when.year < 2050:
        return tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(0x18, when.strftime("%Y%m%d%H%M%SZ").encode())


def elements(der: bytes) -> list[bytes]:
    """The DER elements (tag, length and content) inside the outermost constructed element."""
    def header(at: int) -> tuple[int, int]:          # (offset of content, length of content)
        first = der[at + 1]
        if first < 0x80:
            return at + 2, first
        size = first & 0x7F
        return at + 2 + size, int.from_bytes(der[at + 2:at + 2 + size], "big")

    start, length = header(0)
    out, at = [], start
    while at < start + length:
        content, size = header(at)
        out.append(der[at:content + size])
        at = content + size
    return out


def signed(tbs: bytes, signature_algorithm: bytes, signature: bytes) -> bytes:
    """SEQUENCE { tbs, signatureAlgorithm, BIT STRING signature } (Certificate, CertificateList)."""
    return tlv(0x30, tbs + signature_algorithm + tlv(0x03, b"\x00" + signature))


def sign(signer, data: bytes, hash_algorithm) -> bytes:
    """The signature the builders would ask ``signer`` for: ECDSA, or RSA PKCS#1 v1.5."""
    if isinstance(signer, ec.EllipticCurvePrivateKey):
        return signer.sign(data, ec.ECDSA(hash_algorithm))
    if isinstance(signer, rsa.RSAPrivateKey):
        return signer.sign(data, padding.PKCS1v15(), hash_algorithm)
    raise DeviceCAError(Kind.INTERNAL, f"signing key of unsupported type {type(signer).__name__}")
