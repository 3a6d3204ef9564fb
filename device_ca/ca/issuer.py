"""Issuing device certificates (RFC 5280 §4.1, §4.2) with an injected signer.

The cycle follows boulder's: build the TBSCertificate, sign it with a throw-away key of the
same type, lint that copy, and only then let the real signer (the HSM) sign the linted TBS bytes
themselves (so what is signed is what was linted, byte for byte); the signature must verify
against the issuer's public key before the certificate leaves this module.

With a TemplateLinter (the default), the first certificate of each template (key type, EKUs,
key agreement, subject attribute types, SAN kinds) goes through that cycle and is linted in full
by pkilint; its TBS is then kept as a template, and later certificates of the same template are
encoded by putting their values (serial, validity, subject, public key, key identifier,
subjectAltName) into it as DER, after the value checks pkilint would apply to them. The template
reproduces the builder's TBS byte for byte (checked when it is made, and by the tests for every
key type); it saves the builder, the throw-away signature and parsing the copy again.
"""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID

from device_ca.ca import der
from device_ca.ca.clock import Clock
from device_ca.ca.csr import hash_for_key_type, key_type_of, public_key_der
from device_ca.ca.template_lint import TemplateLinter, refuse, value_problems
from device_ca.errors import DeviceCAError, Kind

BACKDATE = dt.timedelta(minutes=5)

# (certificate DER, issuer certificate DER) -> None; raises on a finding that must stop issuance.
Linter = Callable[[bytes, bytes], None]


@dataclass(frozen=True)
class PublicUrls:
    """Where relying parties fetch status and the issuer: written into CRL DP and AIA."""

    base: str
    ca_name: str = "issuing"

    @property
    def crl(self) -> str:
        return f"{self.base.rstrip('/')}/crl/{self.ca_name}.crl"

    @property
    def ocsp(self) -> str:
        return f"{self.base.rstrip('/')}/ocsp"

    @property
    def ca_issuers(self) -> str:
        return f"{self.base.rstrip('/')}/ca/{self.ca_name}.crt"


@dataclass(frozen=True)
class CertificateRequest:
    """What goes into a device certificate once the policy has decided."""

    subject: x509.Name
    public_key: object
    validity: dt.timedelta
    sans: tuple[x509.GeneralName, ...] = ()
    ekus: tuple[x509.ObjectIdentifier, ...] = (x509.ExtendedKeyUsageOID.CLIENT_AUTH,)
    key_agreement: bool = False


@dataclass(frozen=True)
class Prepared:
    """A linted, not yet signed certificate."""

    serial: int
    subject: x509.Name
    not_before: dt.datetime
    not_after: dt.datetime
    tbs: bytes
    public_key_der: bytes
    signature_algorithm: bytes          # DER AlgorithmIdentifier, as the builder wrote it


class Issuer:
    """An issuing CA: its certificate, a signer holding its key, a clock and the public URLs.
    Without a signer it prepares and lints certificates but cannot sign them."""

    def __init__(self, certificate: x509.Certificate, signer, clock: Clock, urls: PublicUrls,
                 linter: Linter | None = None):
        self.certificate = certificate
        self.signer = signer
        self.clock = clock
        self.urls = urls
        self.linter = linter
        self.key_type = key_type_of(certificate.public_key())
        self.hash = hash_for_key_type(self.key_type)
        self.der = certificate.public_bytes(Encoding.DER)
        if signer is not None:
            check_issuer(certificate, signer)
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        self._templates: dict[tuple, _TbsTemplate] = {}

    def validity(self, request: CertificateRequest) -> tuple[dt.datetime, dt.datetime]:
        """(notBefore, notAfter) for a certificate issued now: backdated a little, cut to the CA's."""
        now = self.clock.now()
        if now >= self.certificate.not_valid_after_utc:
            raise DeviceCAError(Kind.INTERNAL, "the issuing CA certificate has expired")
        return (max(now - BACKDATE, self.certificate.not_valid_before_utc),
                min(now + request.validity, self.certificate.not_valid_after_utc))

    def prepare(self, request: CertificateRequest, serial: int,
                validity: tuple[dt.datetime, dt.datetime] | None = None) -> Prepared:
        """Build the certificate and lint it (signed with a throw-away key, or from a linted
        template). ``validity`` rebuilds a certificate reserved earlier with the same dates (a
        resumed bulk batch)."""
        not_before, not_after = validity or self.validity(request)
        not_before, not_after = not_before.replace(microsecond=0), not_after.replace(microsecond=0)
        if isinstance(self.linter, TemplateLinter):
            key = _template_key(request)
            template = self._templates.get(key)
            if template is not None:
                refuse(value_problems(serial, not_before, not_after, request.subject, request.sans))
                spki = public_key_der(request.public_key)
                return Prepared(serial=serial, subject=request.subject, not_before=not_before, not_after=not_after,
                                tbs=template.tbs(request, serial, not_before, not_after, spki),
                                public_key_der=spki, signature_algorithm=template.signature_algorithm)
            prepared = self._prepare_built(request, serial, not_before, not_after)
            self._templates[key] = _TbsTemplate.from_prepared(request, prepared)
            return prepared
        return self._prepare_built(request, serial, not_before, not_after)

    def _prepare_built(self, request: CertificateRequest, serial: int, not_before: dt.datetime,
                       not_after: dt.datetime) -> Prepared:
        lint_copy = self._builder(request, serial, not_before, not_after).sign(throwaway_key(self.key_type), self.hash)
        lint_der = lint_copy.public_bytes(Encoding.DER)
        if self.linter is not None:
            self.linter(lint_der, self.der)
        return Prepared(serial=serial, subject=request.subject, not_before=not_before, not_after=not_after,
                        tbs=lint_copy.tbs_certificate_bytes, public_key_der=public_key_der(request.public_key),
                        signature_algorithm=der.elements(lint_der)[1])

    def sign(self, prepared: Prepared) -> x509.Certificate:
        """Sign the linted TBS with the real key; refuse a result that does not verify."""
        if self.signer is None:
            raise DeviceCAError(Kind.INTERNAL, "this issuer has no signing key")
        signature = der.sign(self.signer, prepared.tbs, self.hash)
        try:
            certificate = x509.load_der_x509_certificate(der.signed(prepared.tbs, prepared.signature_algorithm,
                                                                    signature))
        except ValueError as exc:
            raise DeviceCAError(Kind.INTERNAL, "signed certificate does not parse; nothing was issued",
                                cause=exc) from None
        verify_signed_by(certificate, self.certificate)
        return certificate

    def _builder(self, request: CertificateRequest, serial: int, not_before: dt.datetime,
                 not_after: dt.datetime) -> x509.CertificateBuilder:
        builder = (
            x509.CertificateBuilder()
            .subject_name(request.subject)
            .issuer_name(self.certificate.subject)
            .public_key(request.public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(request), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(request.ekus)), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(request.public_key), critical=False)
            .add_extension(self._aki, critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(self.urls.crl)],
                relative_name=None, reasons=None, crl_issuer=None)]), critical=False)
            .add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(self.urls.ocsp)),
                x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                       x509.UniformResourceIdentifier(self.urls.ca_issuers)),
            ]), critical=False)
        )
        if request.sans:
            # RFC 5280 §4.2.1.6: critical when the subject is empty.
            builder = builder.add_extension(x509.SubjectAlternativeName(list(request.sans)),
                                            critical=len(request.subject) == 0)
        return builder


def _template_key(request: CertificateRequest) -> tuple:
    """What decides every byte of a TBS except the values a template takes (see the module doc)."""
    return (key_type_of(request.public_key), request.ekus, request.key_agreement,
            tuple(tuple(a.oid.dotted_string for a in rdn) for rdn in request.subject.rdns),
            tuple(type(name).__name__ for name in request.sans))


_SKI_OID = der.tlv(0x06, bytes.fromhex("551d0e"))
_SAN_OID = der.tlv(0x06, bytes.fromhex("551d11"))
_CRITICAL = bytes.fromhex("0101ff")


class _TbsTemplate:
    """A linted TBSCertificate cut into its constant parts, with slots for the values."""

    def __init__(self, head: bytes, signature_algorithm: bytes, issuer: bytes, extensions: list[bytes | str]):
        self.head = head                                  # [0] EXPLICIT version
        self.signature_algorithm = signature_algorithm
        self.issuer = issuer
        self.extensions = extensions                      # DER of constant extensions, "ski" / "san" slots
        self.san_critical = False

    @classmethod
    def from_prepared(cls, request: CertificateRequest, prepared: Prepared) -> "_TbsTemplate":
        """Cut the builder's TBS; refuse to keep a template that does not give those bytes back."""
        version, _serial, signature_algorithm, issuer, _validity, _subject, _spki, extensions = \
            der.elements(prepared.tbs)
        slots: list[bytes | str] = []
        template = cls(version, signature_algorithm, issuer, slots)
        for extension in der.elements(der.elements(extensions)[0]):
            parts = der.elements(extension)
            if parts[0] == _SKI_OID:
                slots.append("ski")
            elif parts[0] == _SAN_OID:
                slots.append("san")
                template.san_critical = parts[1] == _CRITICAL
            else:
                slots.append(extension)
        rebuilt = template.tbs(request, prepared.serial, prepared.not_before, prepared.not_after,
                               prepared.public_key_der)
        if rebuilt != prepared.tbs:
            raise DeviceCAError(Kind.INTERNAL, "certificate template does not reproduce the builder's TBSCertificate")
        return template

    def tbs(self, request: CertificateRequest, serial: int, not_before: dt.datetime, not_after: dt.datetime,
            spki: bytes) -> bytes:
        extensions = []
        for slot in self.extensions:
            if slot == "ski":
                value = x509.SubjectKeyIdentifier.from_public_key(request.public_key).public_bytes()
                extensions.append(der.tlv(0x30, _SKI_OID + der.tlv(0x04, value)))
            elif slot == "san":
                value = x509.SubjectAlternativeName(list(request.sans)).public_bytes()
                extensions.append(der.tlv(0x30, _SAN_OID + (_CRITICAL if self.san_critical else b"")
                                          + der.tlv(0x04, value)))
            else:
                extensions.append(slot)
        return der.tlv(0x30, b"".join((
            self.head, der.tlv(0x02, serial.to_bytes((serial.bit_length() + 8) // 8, "big")),
            self.signature_algorithm, self.issuer,
            der.tlv(0x30, der.time(not_before) + der.time(not_after)),
            request.subject.public_bytes(), spki,
            der.tlv(0xA3, der.tlv(0x30, b"".join(extensions))))))


def _key_usage(request: CertificateRequest) -> x509.KeyUsage:
    is_ec = isinstance(request.public_key, ec.EllipticCurvePublicKey)
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False,
        key_encipherment=isinstance(request.public_key, rsa.RSAPublicKey),
        data_encipherment=False, key_agreement=is_ec and request.key_agreement,
        key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)


def check_issuer(certificate: x509.Certificate, signer) -> None:
    """Refuse to issue from a key that does not match its certificate or a certificate that may not sign."""
    if public_key_der(signer.public_key()) != public_key_der(certificate.public_key()):
        raise DeviceCAError(Kind.INTERNAL, "the CA key on the token does not match the CA certificate")
    try:
        bc = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        certificate.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    except x509.ExtensionNotFound as exc:
        raise DeviceCAError(Kind.INTERNAL, f"CA certificate lacks an extension it needs: {exc.oid._name}") from None
    if not bc.ca or not ku.key_cert_sign or not ku.crl_sign:
        raise DeviceCAError(Kind.INTERNAL, "CA certificate is not allowed to sign certificates and CRLs")


def verify_signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise DeviceCAError(Kind.INTERNAL, "signature made by the token does not verify; nothing was issued",
                            cause=exc) from None


@functools.lru_cache(maxsize=None)
def throwaway_key(key_type: str):
    """A software key of the same type as the CA key: the TBS it signs is identical."""
    kind, _, size = key_type.partition(":")
    if kind == "ec":
        curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[size]
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
