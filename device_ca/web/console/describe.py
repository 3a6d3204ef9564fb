"""A certificate as the console's detail page shows it: its extensions in words (RFC 5280 §4.2
names) and its chain up to the root among the CA certificates this CA knows."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

_KEY_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
               "key_agreement", "key_cert_sign", "crl_sign")
_EKU_NAMES = {ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth", ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
              ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning", ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
              ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping", ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning"}
_ACCESS = {AuthorityInformationAccessOID.OCSP: "OCSP", AuthorityInformationAccessOID.CA_ISSUERS: "CA Issuers"}


@dataclass(frozen=True)
class ExtensionView:
    name: str                 # e.g. keyUsage; the dotted OID when unknown
    oid: str
    critical: bool
    values: tuple[str, ...]   # one line each


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def _general_name(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.UniformResourceIdentifier):
        return f"URI:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"DirName:{name.value.rfc4514_string()}"
    if isinstance(name, x509.OtherName):
        return f"othername:{name.type_id.dotted_string}:{name.value.hex()}"
    return f"{type(name).__name__}:{name.value}"


def _values(value: x509.ExtensionType) -> tuple[str, ...]:
    if isinstance(value, x509.BasicConstraints):
        if not value.ca:
            return ("CA: false",)
        return ("CA: true" + ("" if value.path_length is None else f", path length {value.path_length}"),)
    if isinstance(value, x509.KeyUsage):
        used = [_camel(u) for u in _KEY_USAGES if getattr(value, u)]
        if value.key_agreement:
            used += [u for u, on in (("encipherOnly", value.encipher_only), ("decipherOnly", value.decipher_only))
                     if on]
        return tuple(used)
    if isinstance(value, x509.ExtendedKeyUsage):
        return tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in value)
    if isinstance(value, (x509.SubjectAlternativeName, x509.IssuerAlternativeName)):
        return tuple(_general_name(n) for n in value)
    if isinstance(value, x509.SubjectKeyIdentifier):
        return (_colon_hex(value.digest),)
    if isinstance(value, x509.AuthorityKeyIdentifier):
        return (f"keyid {_colon_hex(value.key_identifier)}",) if value.key_identifier else ()
    if isinstance(value, x509.CRLDistributionPoints):
        return tuple(_general_name(n) for point in value for n in (point.full_name or ()))
    if isinstance(value, x509.AuthorityInformationAccess):
        return tuple(f"{_ACCESS.get(d.access_method, d.access_method.dotted_string)}: "
                     f"{_general_name(d.access_location)}" for d in value)
    if isinstance(value, x509.CertificatePolicies):
        return tuple(p.policy_identifier.dotted_string for p in value)
    if isinstance(value, x509.UnrecognizedExtension):
        return (value.value.hex(),)
    return (value.public_bytes().hex(),)


def extensions(certificate: x509.Certificate) -> list[ExtensionView]:
    """Every extension, in the certificate's order."""
    out = []
    for extension in certificate.extensions:
        oid = extension.oid
        name = oid._name if oid._name != "Unknown OID" else oid.dotted_string
        out.append(ExtensionView(name=name, oid=oid.dotted_string, critical=extension.critical,
                                 values=_values(extension.value)))
    return out


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def chain(certificate: x509.Certificate, cas: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """``certificate`` and its issuers up to a self-signed one, each found among ``cas`` by name and
    signature (an issuing CA generation after a rollover has the same name, another key). Stops
    where no issuer is known."""
    known = list(cas)
    path = [certificate]
    while len(path) <= len(known):
        current = path[-1]
        if current.issuer == current.subject and _signed_by(current, current):
            break
        parent = next((ca for ca in known if ca not in path and _signed_by(current, ca)), None)
        if parent is None:
            break
        path.append(parent)
    return path
