"""CA administration: creating the CA on the token (``device-ca init``), the files derived from it
(CA certificates, the client-CA bundle TLS verifies with), the server's own TLS certificate, and
the pre-fork lint of every policy's certificate shape.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from pathlib import Path
from typing import Callable, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_ca import files
from device_ca.ca.authority import CaProfile, build_issuing, build_root
from device_ca.ca.clock import Clock
from device_ca.ca.csr import key_type_of
from device_ca.ca.issuer import CertificateRequest, Issuer, Linter, PublicUrls, throwaway_key
from device_ca.ca.serial import new_serial
from device_ca.errors import DeviceCAError, Kind
from device_ca.policy import Policies
from device_ca.policy.checks import certificate_request
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.checkpoints import AUDIT_KEY, audit_key_type
from device_ca.ra.issuance import Order
from device_ca.store import AuditEvent, CaRecord, Store
from device_ca.token import CaToken

log = logging.getLogger("device_ca.ra.administration")

ROOT, ISSUING = "root", "issuing"
KEY_LABELS = {ROOT: "device-ca-root", ISSUING: "device-ca-issuing"}
CA_KEY_TYPES = ("ec:P-256", "ec:P-384", "rsa:3072")
SERVER_CERT_RENEW_BEFORE = dt.timedelta(days=30)


def ca_certificates(store: Store) -> dict[str, x509.Certificate]:
    return {name: x509.load_der_x509_certificate(r.der) for name, r in store.ca_certificates().items()}


def current_issuing(store: Store) -> x509.Certificate | None:
    """The issuing CA certificate that issues (the newest generation, ra/rollover.py)."""
    from device_ca.ra.rollover import current

    record = current(store.ca_certificates())
    return x509.load_der_x509_certificate(record.der) if record is not None else None


class CaAdministration:
    def __init__(self, store: Store, token: CaToken, ra: RegistrationAuthority, clock: Clock, linter: Linter | None,
                 home: Path, public_url: str, policies: Callable[[], Policies]):
        self.store = store
        self.token = token
        self.ra = ra
        self.clock = clock
        self.linter = linter
        self.home = home
        self.public_url = public_url
        self._policies = policies

    def init_ca(self, key_type: str, profile: CaProfile, actor: str) -> dict[str, x509.Certificate]:
        """Generate both CA keys (and the audit checkpoint key) on the token and create the root
        and issuing certificates."""
        if key_type not in CA_KEY_TYPES:
            raise DeviceCAError(Kind.MALFORMED, f"CA key type must be one of {', '.join(CA_KEY_TYPES)}")
        if self.store.ca_certificates():
            raise DeviceCAError(Kind.CONFLICT, "a CA already exists; refusing to overwrite it")
        present = set(self.token.labels()) & set(KEY_LABELS.values())
        if present:
            raise DeviceCAError(Kind.CONFLICT, f"token {self.token.label!r} already holds "
                                f"{', '.join(sorted(present))}; refusing to overwrite")
        audit_type = None if self.token.find(AUDIT_KEY) is not None else audit_key_type(self.token)
        self.token.require(key_type, *filter(None, [audit_type]))  # nothing is made unless all can be
        root_key = self.token.generate(KEY_LABELS[ROOT], key_type)
        issuing_key = self.token.generate(KEY_LABELS[ISSUING], key_type)
        if audit_type is not None:                             # signs the audit checkpoints
            self.token.generate(AUDIT_KEY, audit_type)
        root = build_root(root_key, profile, self.clock, self.linter)
        issuing = build_issuing(root, root_key, issuing_key.public_key(), profile, self.clock, self.linter,
                                root_urls=PublicUrls(self.public_url, ROOT))
        now = self.clock.now()
        records = [CaRecord(name=name, key_label=KEY_LABELS[name], key_type=key_type_of(c.public_key()),
                            der=c.public_bytes(Encoding.DER), serial=format(c.serial_number, "x"),
                            not_after=c.not_valid_after_utc, created_at=now)
                   for name, c in ((ROOT, root), (ISSUING, issuing))]
        self.store.save_ca(records, AuditEvent(
            action="ca.created", actor=actor, at=now,
            details={"key_type": key_type, "root": records[0].serial, "issuing": records[1].serial,
                     "token": self.token.label}))
        self.export_ca_files()
        return {ROOT: root, ISSUING: issuing}

    def export_ca_files(self) -> dict[str, Path]:
        """root.pem, <issuing CA>.pem of each generation, chain.pem (the issuing CA that issues
        first) and trust.pem (every issuing CA still trusted, newest first, then the root: the trust
        store of a relying party whose devices present their certificate without its issuer, such as
        Keycloak's HTTPS listener) under the state directory."""
        from device_ca.ra.rollover import trusted_issuing

        certs = ca_certificates(self.store)
        directory = self.home / "ca"
        directory.mkdir(parents=True, exist_ok=True)
        contents = {f"{name}.pem": c.public_bytes(Encoding.PEM) for name, c in certs.items()}
        contents["chain.pem"] = current_issuing(self.store).public_bytes(Encoding.PEM) + contents["root.pem"]
        contents["trust.pem"] = b"".join(c.public_bytes(Encoding.PEM) for c in trusted_issuing(
            self.store.ca_certificates(), self.clock.now())) + contents["root.pem"]
        paths = {}
        for filename, data in contents.items():
            files.publish(directory / filename, data)
            paths[filename] = directory / filename
        return paths

    def client_ca_bundle(self) -> Path:
        """Every issuing CA generation still trusted, the root, and every manufacturer CA a policy
        trusts: what TLS verifies client certificates with (``tls/client-ca.pem``)."""
        from device_ca.ra.rollover import trusted_issuing

        certs = ca_certificates(self.store)
        if ROOT not in certs:
            raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
        pem = b"".join(c.public_bytes(Encoding.PEM)
                       for c in trusted_issuing(self.store.ca_certificates(), self.clock.now()) + [certs[ROOT]])
        for policy in self._policies():
            for path in policy.manufacturer_cas:
                pem += Path(path).read_bytes().strip() + b"\n"
        bundle = self.home / "tls" / "client-ca.pem"
        bundle.parent.mkdir(parents=True, exist_ok=True)
        files.publish(bundle, pem)
        return bundle

    def ensure_server_certificate(self, host: str, actor: str) -> tuple[Path, Path]:
        """``tls/server.pem`` (with the issuing CA) and ``tls/server.key``: kept while issued by this
        CA and valid for more than 30 days, else issued anew."""
        directory = self.home / "tls"
        cert, key = directory / "server.pem", directory / "server.key"
        if cert.exists() and key.exists():
            current = x509.load_pem_x509_certificate(cert.read_bytes())
            issuing = current_issuing(self.store)
            if issuing is not None and current.issuer == issuing.subject \
                    and current.not_valid_after_utc - self.clock.now() > SERVER_CERT_RENEW_BEFORE:
                return cert, key
        self.issue_server_certificate([host], directory, actor)
        return cert, key

    def issue_server_certificate(self, hosts: list[str], directory: Path, actor: str) -> x509.Certificate:
        """A TLS server certificate for ``device-ca serve`` (software key, 0600), issued through the
        pipeline like any other certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        request = CertificateRequest(
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]), public_key=key.public_key(),
            validity=dt.timedelta(days=90), sans=tuple(sans), ekus=(ExtendedKeyUsageOID.SERVER_AUTH,))
        issued = self.ra.issue_order(Order(request, f"tls-server:{hosts[0]}", "_tls-server", "admin", actor))
        directory.mkdir(parents=True, exist_ok=True)
        files.write_atomically(directory / "server.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        files.write_atomically(directory / "server.pem",
                               issued.pem + current_issuing(self.store).public_bytes(Encoding.PEM))
        return issued.certificate


def warm_linter(store: Store, policies: Policies, linter: Linter | None, clock: Clock, public_url: str,
                names: Iterable[str] | None = None) -> int:
    """Lint every policy's certificate shape now, once per key type the policy allows: a certificate
    for a sample device id and a software key, prepared by an issuer without a signing key (nothing
    is signed, PKCS#11 is not opened). A server's parent calls this before it forks, so each worker
    starts with the shapes known clean instead of spending half a second in pkilint on its first
    certificate. ``names``: only these policies. Returns how many shapes were linted in full."""
    from device_ca.ra.rollover import current

    record = current(store.ca_certificates())
    if record is None or linter is None:
        return 0
    issuer = Issuer(x509.load_der_x509_certificate(record.der), None, clock, PublicUrls(public_url, record.name),
                    linter)
    before = getattr(linter, "full_runs", 0)
    for policy in policies:
        if names is not None and policy.name not in names:
            continue
        for key_type in policy.key_types:
            request = certificate_request(policy, "warm-up", throwaway_key(key_type).public_key())
            try:
                issuer.prepare(request, new_serial())
            except DeviceCAError as exc:        # the first real certificate of this shape says why
                log.warning("policy %s (%s): template lint failed: %s", policy.name, key_type, exc)
    return getattr(linter, "full_runs", 0) - before
