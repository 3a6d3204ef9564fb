"""Root and issuing CA certificates (RFC 5280 §4.2.1.9 basicConstraints, §4.2.1.10 nameConstraints).

An issuing CA certificate names where its own status is published (RFC 5280 §4.2.1.13 CRL
distribution point: the root's CRL) and where its issuer is (§4.2.2.1 AIA caIssuers: the root
certificate), so that a relying party that wants revocation information for every CA in the path
finds it. The root answers no OCSP, so the AIA holds no OCSP URL.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID

from device_ca.ca.clock import Clock
from device_ca.ca.csr import hash_for_key_type, key_type_of
from device_ca.ca.issuer import Linter, PublicUrls, verify_signed_by
from device_ca.ca.serial import new_serial


@dataclass(frozen=True)
class CaProfile:
    organization: str = "device-ca"
    root_validity: dt.timedelta = dt.timedelta(days=20 * 365)
    issuing_validity: dt.timedelta = dt.timedelta(days=10 * 365)
    permitted_dns: tuple[str, ...] = field(default=())
    permitted_uri: tuple[str, ...] = field(default=())

    def root_name(self) -> x509.Name:
        return x509.Name([
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, self.organization),
            x509.NameAttribute(x509.NameOID.COMMON_NAME, f"{self.organization} Root CA"),
        ])

    def issuing_name(self, generation: int = 1) -> x509.Name:
        """The issuing CA's name; generations after the first (rollover) are told apart by a suffix,
        so that relying parties never match one generation's CRL to another's certificates."""
        suffix = "" if generation == 1 else f" G{generation}"
        return x509.Name([
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, self.organization),
            x509.NameAttribute(x509.NameOID.COMMON_NAME, f"{self.organization} Device Issuing CA{suffix}"),
        ])


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)


def build_root(signer, profile: CaProfile, clock: Clock, linter: Linter | None = None) -> x509.Certificate:
    """A self-signed root; its key signs only the issuing CA and its CRLs."""
    public_key = signer.public_key()
    now = clock.now()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(profile.root_name())
        .issuer_name(profile.root_name())
        .public_key(public_key)
        .serial_number(new_serial())
        .not_valid_before(now)
        .not_valid_after(now + profile.root_validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    certificate = builder.sign(signer, hash_for_key_type(key_type_of(public_key)))
    verify_signed_by(certificate, certificate)
    if linter is not None:
        der = certificate.public_bytes(Encoding.DER)
        linter(der, der)
    return certificate


def build_issuing(root: x509.Certificate, root_signer, issuing_public_key, profile: CaProfile, clock: Clock,
                  linter: Linter | None = None, root_urls: PublicUrls | None = None,
                  generation: int = 1) -> x509.Certificate:
    """The issuing CA: pathLen 0, so it can sign only end-entity (device) certificates. With
    ``root_urls`` (the root's public URLs) it carries the root CRL's distribution point and the
    root certificate's caIssuers URL."""
    now = clock.now()
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(profile.issuing_name(generation))
        .issuer_name(root.subject)
        .public_key(issuing_public_key)
        .serial_number(new_serial())
        .not_valid_before(now)
        .not_valid_after(min(now + profile.issuing_validity, root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(issuing_public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), critical=False)
    )
    if root_urls is not None:
        builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(root_urls.crl)], relative_name=None, reasons=None,
            crl_issuer=None)]), critical=False)
        builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(root_urls.ca_issuers))]),
            critical=False)
    subtrees = [x509.DNSName(d) for d in profile.permitted_dns] + \
               [x509.UniformResourceIdentifier(u) for u in profile.permitted_uri]
    if subtrees:
        builder = builder.add_extension(x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None),
                                        critical=True)
    certificate = builder.sign(root_signer, hash_for_key_type(key_type_of(root.public_key())))
    verify_signed_by(certificate, root)
    if linter is not None:
        linter(certificate.public_bytes(Encoding.DER), root.public_bytes(Encoding.DER))
    return certificate
