"""Certificate revocation lists (RFC 5280 §5) signed by an injected signer, and their publication.

A CRL built here is v2, names its issuer with the CA certificate's subject byte for byte, carries
the CA's SKI as authorityKeyIdentifier (§5.2.1) and a non-critical cRLNumber (§5.2.3, at most 20
octets), and gives each entry a reasonCode (§5.3.1) unless the reason is ``unspecified`` (the
SHOULD of §5.3.1). With no entries the revokedCertificates field is absent, as §5.1.2.6 requires.
The signature is checked against the CA certificate's key before the CRL leaves this module, so a
corrupted signature from the token is never published.

Keeping cRLNumber strictly increasing and thisUpdate monotonic across CRLs is the caller's job:
it owns the state (the database); this module only refuses numbers outside the allowed range.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca import der
from device_ca.ca.csr import key_type_of
from device_ca.ca.issuer import check_issuer, throwaway_key
from device_ca.errors import DeviceCAError, Kind

# RFC 5280 §5.2.3: "CRL issuers MUST NOT use CRLNumber values longer than 20 octets"; a positive
# DER INTEGER of 20 octets holds at most 159 bits.
MAX_CRL_NUMBER = 2**159 - 1
MAX_SERIAL = 2**159 - 1

# RFC 5280 §5.3.1 reason names. certificateHold is left out (revocation here is final) and
# removeFromCRL belongs to delta CRLs, which this CA does not issue.
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

@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: dt.datetime
    reason: str = "unspecified"


def reason_flag(reason: str) -> x509.ReasonFlags | None:
    """The reasonCode to encode for ``reason``; None for ``unspecified`` (RFC 5280 §5.3.1 SHOULD)."""
    if reason not in REASONS:
        raise DeviceCAError(Kind.INTERNAL, f"unknown revocation reason {reason!r}")
    return None if reason == "unspecified" else REASONS[reason]


def utc_seconds(when: dt.datetime) -> dt.datetime:
    """``when`` in UTC without fractions of a second; naive datetimes are refused."""
    if when.tzinfo is None:
        raise DeviceCAError(Kind.INTERNAL, "naive datetime: CRL and OCSP times must carry a time zone")
    return when.astimezone(dt.timezone.utc).replace(microsecond=0)


def build_crl(issuer_cert: x509.Certificate, signer, entries: Iterable[RevokedEntry], crl_number: int,
              this_update: dt.datetime, next_update: dt.datetime, hash_algorithm) -> x509.CertificateRevocationList:
    """Build and sign the CRL of ``issuer_cert``; raise DeviceCAError if it cannot be built or does not verify."""
    if not isinstance(crl_number, int) or not 1 <= crl_number <= MAX_CRL_NUMBER:
        raise DeviceCAError(Kind.INTERNAL, "CRL number must be 1..2^159-1 (at most 20 octets, RFC 5280 §5.2.3)")
    this_update, next_update = utc_seconds(this_update), utc_seconds(next_update)
    if next_update <= this_update:
        raise DeviceCAError(Kind.INTERNAL, "CRL nextUpdate must be later than thisUpdate")
    check_issuer(issuer_cert, signer)
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    # cryptography builds each revokedCertificates entry as an object (10-15 µs each, most of the
    # time for 100,000 entries), so the entries are DER-encoded here and spliced into the TBS of an
    # entry-less CRL that cryptography built and a throw-away key of the same type signed: every
    # other field is cryptography's, byte for byte. The real key then signs the spliced TBS, and the
    # result is parsed and verified like any other CRL (tests compare the TBS with the builder's).
    revoked = _encode_revoked(entries)
    template = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .sign(throwaway_key(key_type_of(signer.public_key())), hash_algorithm)
    )
    tbs = _with_revoked(template.tbs_certlist_bytes, revoked)
    signature_algorithm = der.elements(template.public_bytes(Encoding.DER))[1]
    signed = der.signed(tbs, signature_algorithm, der.sign(signer, tbs, hash_algorithm))
    try:
        crl = x509.load_der_x509_crl(signed)
    except ValueError as exc:
        raise DeviceCAError(Kind.INTERNAL, f"CRL does not parse: {exc}") from None
    verify_crl_signature(crl, issuer_cert)
    return crl


# RFC 5280 §5.3.1 CRLReason codes, and each one's crlEntryExtensions: the reasonCode extension
# alone (id-ce-cRLReasons, non-critical, ENUMERATED); unspecified is left out (its SHOULD).
_REASON_CODES = {"keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3, "superseded": 4,
                 "cessationOfOperation": 5, "privilegeWithdrawn": 9, "aACompromise": 10}
_REASON_EXTENSION_DER = {name: bytes.fromhex("300c300a0603551d1504030a01") + bytes([code])
                         for name, code in _REASON_CODES.items()}


def _encode_revoked(entries: Iterable[RevokedEntry]) -> bytes:
    """revokedCertificates (RFC 5280 §5.1) as DER; b"" for no entries (the field is then absent)."""
    parts, seen, times = [], set(), {}
    for entry in entries:
        serial = entry.serial
        if not isinstance(serial, int) or not 0 < serial <= MAX_SERIAL:
            raise DeviceCAError(Kind.INTERNAL, f"serial {serial!r} cannot appear in a CRL (1..2^159-1)")
        if serial in seen:
            raise DeviceCAError(Kind.INTERNAL, f"serial {serial:x} listed twice in the CRL")
        seen.add(serial)
        if entry.reason not in REASONS:
            raise DeviceCAError(Kind.INTERNAL, f"unknown revocation reason {entry.reason!r}")
        when = entry.revoked_at
        time_der = times.get(when)
        if time_der is None:
            if when.tzinfo is None:
                raise DeviceCAError(Kind.INTERNAL, "naive revocation time: CRL times must carry a time zone")
            time_der = times[when] = _time(when.astimezone(dt.timezone.utc))
        serial_bytes = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
        body = der.tlv(0x02, serial_bytes) + time_der + _REASON_EXTENSION_DER.get(entry.reason, b"")
        parts.append(der.tlv(0x30, body))
    return der.tlv(0x30, b"".join(parts)) if parts else b""


def _time(when: dt.datetime) -> bytes:
    """RFC 5280 §5.1.2.4/§4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, seconds, Z."""
    if 1950 <= when.year <= 2049:
        return der.tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode())
    return der.tlv(0x18, when.strftime("%Y%m%d%H%M%SZ").encode())


def _with_revoked(tbs_without_entries: bytes, revoked: bytes) -> bytes:
    """TBSCertList with ``revoked`` placed after nextUpdate, before the [0] crlExtensions."""
    elements = der.elements(tbs_without_entries)
    at = next((i for i, e in enumerate(elements) if e[0] == 0xA0), len(elements))
    return der.tlv(0x30, b"".join(elements[:at]) + revoked + b"".join(elements[at:]))


def verify_crl_signature(crl: x509.CertificateRevocationList, issuer_cert: x509.Certificate) -> None:
    try:
        valid = crl.is_signature_valid(issuer_cert.public_key())
    except (InvalidSignature, ValueError, TypeError):
        valid = False
    if not valid:
        raise DeviceCAError(Kind.INTERNAL, "CRL signature made by the token does not verify; nothing was published")
