"""Linting by template: pkilint once per certificate shape, cheap value checks on every certificate.

pkilint costs 5-15 ms per certificate. The certificates of one policy differ only in values that
the policy's checks already constrain: serial, validity dates, the values of the subject
attributes and subjectAltNames, the public key and its key identifier. Everything else (issuer,
signature algorithm, key type, subject attribute types and order, SAN kinds, every other
extension byte for byte) is the certificate's *shape*. The first certificate of a shape is linted
in full with pkilint; a later certificate of the same shape is checked in process for the
value-dependent rules that pkilint applies (serial size, attribute lengths and characters, URI and
DNS syntax, validity order). A new shape, e.g. after a policy change, is linted in full again.
"""
from __future__ import annotations

import datetime as dt
import re
import threading
from typing import Callable, Iterable

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from device_ca.ca.csr import key_type_of
from device_ca.errors import DeviceCAError, Kind

Linter = Callable[[bytes, bytes], None]

# RFC 5280 Appendix A upper bounds for the attributes device-ca templates use.
_UPPER_BOUNDS = {"2.5.4.3": 64, "2.5.4.10": 64, "2.5.4.11": 64, "2.5.4.5": 64, "2.5.4.7": 128, "2.5.4.8": 128,
                 "2.5.4.6": 2}
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[!#$%&'()*+,\-./0-9:;=?@A-Z\[\]_a-z~]+")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_VALUE_EXTENSIONS = {ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.SUBJECT_ALTERNATIVE_NAME}


def shape(certificate: x509.Certificate) -> tuple:
    extensions = []
    for ext in certificate.extensions:
        if ext.oid == ExtensionOID.SUBJECT_KEY_IDENTIFIER:
            value: object = "ski"
        elif ext.oid == ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            value = tuple(type(name).__name__ for name in ext.value)
        else:
            value = ext.value.public_bytes()
        extensions.append((ext.oid.dotted_string, ext.critical, value))
    return (certificate.version.name, certificate.signature_algorithm_oid.dotted_string,
            certificate.issuer.public_bytes(), key_type_of(certificate.public_key()),
            tuple(a.oid.dotted_string for rdn in certificate.subject.rdns for a in rdn), tuple(extensions))


def check_values(certificate: x509.Certificate) -> list[str]:
    """The value-dependent rules; an empty list means clean."""
    try:
        sans = certificate.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        sans = []
    return value_problems(certificate.serial_number, certificate.not_valid_before_utc,
                          certificate.not_valid_after_utc, certificate.subject, sans)


def value_problems(serial: int, not_before: dt.datetime, not_after: dt.datetime, subject: x509.Name,
                   sans: Iterable[x509.GeneralName]) -> list[str]:
    """``check_values`` on the values a certificate is made of (before it is encoded)."""
    problems = []
    if not 0 < serial < 1 << 159:
        problems.append("serial number out of range")
    if not_before >= not_after:
        problems.append("notBefore is not before notAfter")
    for attribute in subject:
        value = attribute.value if isinstance(attribute.value, str) else ""
        bound = _UPPER_BOUNDS.get(attribute.oid.dotted_string, 64)
        if not value or len(value) > bound or _CONTROL.search(value):
            problems.append(f"subject attribute {attribute.oid.dotted_string} is empty, longer than {bound} "
                            "or has control characters")
    for name in sans:
        if isinstance(name, x509.UniformResourceIdentifier) and not _URI.fullmatch(name.value):
            problems.append(f"invalid URI in subjectAltName: {name.value!r}")
        if isinstance(name, x509.DNSName):
            labels = name.value.split(".")
            if len(name.value) > 253 or len(labels) < 2 or not all(_DNS_LABEL.fullmatch(lbl) for lbl in labels):
                problems.append(f"invalid DNS name in subjectAltName: {name.value!r}")
    return problems


def refuse(problems: list[str]) -> None:
    if problems:
        raise DeviceCAError(Kind.POLICY_REJECTED, "pre-issuance lint failed: " + "; ".join(problems))


class TemplateLinter:
    """A Linter: full ``linter`` on each new shape, ``check_values`` on every certificate."""

    def __init__(self, linter: Linter):
        self._linter = linter
        self._clean: set[tuple] = set()
        self._lock = threading.Lock()
        self.full_runs = 0

    def __call__(self, cert_der: bytes, issuer_der: bytes) -> None:
        certificate = x509.load_der_x509_certificate(cert_der)
        refuse(check_values(certificate))
        key = shape(certificate)
        if key in self._clean:
            return
        self._linter(cert_der, issuer_der)
        with self._lock:
            self.full_runs += 1
            self._clean.add(key)
