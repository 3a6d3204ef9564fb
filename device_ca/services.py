"""The composition root: settings in, lazily built store, token, policies, issuer and RA out.

Nothing here opens PKCS#11 until a signer is needed, so a process may build ``Services`` and
fork before the first signature (SoftHSM must be initialised after a fork).
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import os
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca.authority import CaProfile, build_issuing, build_root
from device_ca.ca.clock import Clock, SystemClock
from device_ca.ca.csr import key_type_of
from device_ca.ca.issuer import Issuer, Linter, PublicUrls
from device_ca.ca.serial import new_serial
from device_ca.ca.template_lint import TemplateLinter
from device_ca.config import Settings
from device_ca.errors import DeviceCAError, Kind
from device_ca.policy import Policies
from device_ca.ra.authority import RegistrationAuthority
from device_ca.store import AuditEvent, CaRecord, Store

log = logging.getLogger("device_ca.services")

ROOT, ISSUING = "root", "issuing"
KEY_LABELS = {ROOT: "device-ca-root", ISSUING: "device-ca-issuing"}
CA_KEY_TYPES = ("ec:P-256", "ec:P-384", "rsa:3072")


# The linted copy is signed by a throw-away key, so its signature cannot verify against the
# issuer; the real signature is verified after the token signs (Issuer.sign).
_PRE_ISSUANCE_EXPECTED = frozenset({"pkix.signature_verification_failed"})


def pkilint_gate(cert_der: bytes, issuer_der: bytes) -> None:
    """Pre-issuance lint: any finding at ERROR or above stops the signature."""
    from device_ca.ca.lint import LintError, lint_certificate, require_clean

    findings = [f for f in lint_certificate(cert_der, issuer_der) if f.code not in _PRE_ISSUANCE_EXPECTED]
    try:
        require_clean(findings, threshold="ERROR")
    except LintError as exc:
        raise DeviceCAError(Kind.POLICY_REJECTED, f"pre-issuance {exc}") from None


_DEFAULT = object()


class Services:
    def __init__(self, settings: Settings, clock: Clock | None = None, linter: Linter | None = _DEFAULT):
        self.settings = settings
        self.clock = clock or SystemClock()
        if linter is _DEFAULT:
            linter = TemplateLinter(pkilint_gate) if settings.lint == "template" else pkilint_gate
        self.linter = linter

    @functools.cached_property
    def store(self) -> Store:
        self.settings.home.mkdir(parents=True, exist_ok=True)
        return Store(self.settings.database_url)

    @functools.cached_property
    def policies(self) -> Policies:
        return Policies.load(self.settings.policy_dir)

    @functools.cached_property
    def token(self):
        import hsm

        try:
            return hsm.open_token(hsm.TokenConfig(module=self.settings.hsm_module,
                                                  token_label=self.settings.hsm_token, pin=hsm.pin_from_env()))
        except hsm.HsmError as exc:
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, str(exc), cause=exc) from None

    def token_ping(self) -> None:
        import hsm

        try:
            self.token.ping()
        except hsm.HsmError as exc:
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, str(exc), cause=exc) from None

    def ca_certificates(self) -> dict[str, x509.Certificate]:
        """The CA certificates; read once per process once a CA exists (they never change under it)."""
        cached = self.__dict__.get("_ca_certificates")
        if cached:
            return cached
        certs = {name: x509.load_der_x509_certificate(r.der) for name, r in self.store.ca_certificates().items()}
        if certs:
            self.__dict__["_ca_certificates"] = certs
        return certs

    def _signer(self, label: str):
        import hsm

        try:
            key = self.token.find_key(label)
        except hsm.HsmError as exc:
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, str(exc), cause=exc) from None
        if key is None:
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, f"key {label!r} not found on token {self.settings.hsm_token!r}")
        return key

    @functools.cached_property
    def issuer(self) -> Issuer:
        records = self.store.ca_certificates()
        if ISSUING not in records:
            raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
        record = records[ISSUING]
        certificate = x509.load_der_x509_certificate(record.der)
        return Issuer(certificate, self._signer(record.key_label), self.clock,
                      PublicUrls(self.settings.public_url, ISSUING), self.linter)

    def warm_linter(self, names: Iterable[str] | None = None) -> int:
        """Lint every policy's certificate shape now, once per key type the policy allows: a
        certificate for a sample device id and a software key, prepared by an issuer without a
        signing key (nothing is signed, PKCS#11 is not opened). A server's parent calls this before
        it forks, so each worker starts with the shapes known clean instead of spending half a
        second in pkilint on its first certificate. ``names``: only these policies. Returns how many
        shapes were linted in full."""
        from device_ca.ca.issuer import throwaway_key
        from device_ca.policy.checks import certificate_request

        records = self.store.ca_certificates()
        if ISSUING not in records or self.linter is None:
            return 0
        issuer = Issuer(x509.load_der_x509_certificate(records[ISSUING].der), None, self.clock,
                        PublicUrls(self.settings.public_url, ISSUING), self.linter)
        before = getattr(self.linter, "full_runs", 0)
        for policy in self.policies:
            if names is not None and policy.name not in names:
                continue
            for key_type in policy.key_types:
                request = certificate_request(policy, "warm-up", throwaway_key(key_type).public_key())
                try:
                    issuer.prepare(request, new_serial())
                except DeviceCAError as exc:        # the first real certificate of this shape says why
                    log.warning("policy %s (%s): template lint failed: %s", policy.name, key_type, exc)
        return getattr(self.linter, "full_runs", 0) - before

    @functools.cached_property
    def ra(self) -> RegistrationAuthority:
        return RegistrationAuthority(self.store, self.policies, lambda: self.issuer, self.clock)

    @functools.cached_property
    def est(self):
        from device_ca.ra.enrollment import EstService

        return EstService(self.ra, self.store, self.policies, self.clock, lambda: self.issuer.certificate)

    @functools.cached_property
    def keycloak(self):
        """The Keycloak reconciler (``keycloak_url`` and credentials must be configured)."""
        from device_ca.keycloak import admin_client
        from device_ca.keycloak.sync import KeycloakSync

        settings = self.settings.keycloak
        if settings is None:
            raise DeviceCAError(Kind.NOT_FOUND, "Keycloak is not configured: set keycloak_url in device-ca.toml "
                                "or DEVICE_CA_KEYCLOAK_URL")

        def trust_anchor() -> x509.Certificate:
            certs = self.ca_certificates()
            if ROOT not in certs:
                raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
            return certs[ROOT]

        return KeycloakSync(admin_client(settings), self.store, self.policies, trust_anchor, self.clock,
                            concurrency=settings.concurrency)

    @functools.cached_property
    def keycloak_drainer(self):
        from device_ca.keycloak.outbox import OutboxDrainer

        return OutboxDrainer(self.keycloak, self.store.queue, self.clock)

    @functools.cached_property
    def revocation(self):
        from device_ca.ra.status import RevocationService

        return RevocationService(self.store, lambda: self.issuer, lambda: self.token, self.clock,
                                 self.settings.home / "crl" / f"{ISSUING}.crl", self.linter, ISSUING)

    def issue_server_certificate(self, hosts: list[str], directory: Path, actor: str) -> x509.Certificate:
        """A TLS server certificate for ``device-ca serve`` (software key, 0600), recorded like any other."""
        import ipaddress

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        from device_ca.ca.issuer import CertificateRequest

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
        issued = self.ra.issue_request(request, device_id=f"tls-server:{hosts[0]}", policy_name="_tls-server",
                                       method="admin", actor=actor)
        directory.mkdir(parents=True, exist_ok=True)
        key_path, cert_path = directory / "server.key", directory / "server.pem"
        tmp_key = key_path.with_name("server.key.tmp")
        fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        chain = issued.pem + self.ca_certificates()[ISSUING].public_bytes(Encoding.PEM)
        tmp_cert = cert_path.with_name("server.pem.tmp")
        tmp_cert.write_bytes(chain)
        os.replace(tmp_key, key_path)
        os.replace(tmp_cert, cert_path)
        return x509.load_pem_x509_certificate(issued.pem)

    def init_ca(self, key_type: str, profile: CaProfile, actor: str) -> dict[str, x509.Certificate]:
        """Generate both CA keys on the token and create the root and issuing certificates."""
        import hsm

        if key_type not in CA_KEY_TYPES:
            raise DeviceCAError(Kind.MALFORMED, f"CA key type must be one of {', '.join(CA_KEY_TYPES)}")
        if self.store.ca_certificates():
            raise DeviceCAError(Kind.CONFLICT, "a CA already exists; refusing to overwrite it")
        try:
            present = set(self.token.labels()) & set(KEY_LABELS.values())
            if present:
                raise DeviceCAError(Kind.CONFLICT, f"token {self.settings.hsm_token!r} already holds "
                                    f"{', '.join(sorted(present))}; refusing to overwrite")
            root_key = self.token.generate_key(KEY_LABELS[ROOT], key_type)
            issuing_key = self.token.generate_key(KEY_LABELS[ISSUING], key_type)
        except hsm.HsmError as exc:
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, str(exc), cause=exc) from None
        root = build_root(root_key, profile, self.clock, self.linter)
        issuing = build_issuing(root, root_key, issuing_key.public_key(), profile, self.clock, self.linter)
        now = self.clock.now()
        records = [CaRecord(name=name, key_label=KEY_LABELS[name], key_type=key_type_of(c.public_key()),
                            der=c.public_bytes(Encoding.DER), serial=format(c.serial_number, "x"),
                            not_after=c.not_valid_after_utc, created_at=now)
                   for name, c in ((ROOT, root), (ISSUING, issuing))]
        self.store.save_ca(records, AuditEvent(
            action="ca.created", actor=actor, at=now,
            details={"key_type": key_type, "root": records[0].serial, "issuing": records[1].serial,
                     "token": self.settings.hsm_token}))
        self.__dict__.pop("_ca_certificates", None)
        self.export_ca_files()
        return {ROOT: root, ISSUING: issuing}

    def export_ca_files(self) -> dict[str, Path]:
        """root.pem, issuing.pem and chain.pem (issuing first) under the state directory."""
        certs = self.ca_certificates()
        directory = self.settings.home / "ca"
        directory.mkdir(parents=True, exist_ok=True)
        contents = {f"{name}.pem": c.public_bytes(Encoding.PEM) for name, c in certs.items()}
        contents["chain.pem"] = contents["issuing.pem"] + contents["root.pem"]
        paths = {}
        for filename, data in contents.items():
            path = directory / filename
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            paths[filename] = path
        return paths


__all__ = ["Services", "CaProfile", "pkilint_gate", "KEY_LABELS", "CA_KEY_TYPES"]
