"""EST workflows (RFC 7030 §3.3 authentication, §4.2 enroll and re-enroll, §4.4 server-side keys).

The edge (web/) hands in what it knows about the caller; everything that decides who may
get which certificate lives here: one-time bootstrap tokens, factory (IDevID) certificates
from manufacturer CAs that the policy trusts, the current certificate for re-enrollment, and
operator approval for policies that require it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from device_ca import policy as policies_
from device_ca.ca import csr as csrs
from device_ca.ca.clock import Clock
from device_ca.ca.issuer import CertificateRequest
from device_ca.errors import DeviceCAError, Kind
from device_ca.policy import Policies, Policy
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.issuance import Issued, Order, check_method, counted, decide, issued_messages, replacing
from device_ca.store import IssuanceLinks, PendingRequest, Store

log = logging.getLogger("device_ca.ra.enrollment")

MAX_TOKEN_TTL = dt.timedelta(days=30)
RETRY_AFTER_SECONDS = 60
BAD_TOKEN = "invalid, expired or already used bootstrap credentials"


@dataclass(frozen=True)
class Caller:
    """What the transport established about the client."""

    address: str
    basic: tuple[str, str] | None = None
    certificate: x509.Certificate | None = None


@dataclass(frozen=True)
class NewToken:
    id: str
    secret: str = dataclasses.field(repr=False)
    expires_at: dt.datetime


@dataclass(frozen=True)
class Authenticated:
    method: str
    device_id: str | None
    token_id: str | None = None
    supersedes: str | None = None          # re-enrollment: the current certificate, renewed by this one


class EstService:
    def __init__(self, ra: RegistrationAuthority, store: Store, policies: Policies, clock: Clock,
                 issuing_cas: Callable[[], list[x509.Certificate]]):
        """``issuing_cas``: the issuing CAs whose certificates authenticate a device (every generation
        still valid, none revoked or retired), read at each call."""
        self.ra = ra
        self.store = store
        self.policies = policies
        self.clock = clock
        self._issuing_cas = issuing_cas

    # -- tokens --------------------------------------------------------------------------

    def create_token(self, policy_name: str, device_id: str, ttl: dt.timedelta, actor: str) -> "NewToken":
        """A one-time secret for ``device_id``; only its hash is stored. Returns the secret with the
        token's id (what ``token list`` shows and ``token revoke`` takes)."""
        policy = self.policies.get(policy_name)
        check_method(policy, "bootstrap-token")
        policies_.checks.check_device_id(policy, policies_.checks.Subject(csr=None, device_id=device_id))
        if not dt.timedelta(minutes=1) <= ttl <= MAX_TOKEN_TTL:
            raise DeviceCAError(Kind.MALFORMED, "token lifetime must be between 1 minute and 30 days")
        secret, token_id = secrets.token_urlsafe(24), secrets.token_hex(8)
        now = self.clock.now()
        self.store.enrollment.add_token(token_id, _sha256(secret), device_id, policy.name, now, now + ttl, actor)
        return NewToken(token_id, secret, now + ttl)

    def withdraw_token(self, token_id: str, actor: str):
        """Withdraw an unused token: from now on it is refused like a wrong one (401)."""
        return self.store.enrollment.withdraw_token(token_id, actor, self.clock.now())

    # -- enrollment ----------------------------------------------------------------------

    def enroll(self, label: str, csr_der: bytes, caller: Caller) -> Issued:
        policy = self.policies.get(label)
        with counted(policy.name, "est"):
            who = self._authenticate(policy, caller)
            request, device_id, pending_id, who = self._decide(policy, csr_der, who, caller)
            return self._issue(policy, request, device_id, who, pending_id)

    def serverkeygen(self, label: str, csr_der: bytes, caller: Caller) -> tuple[Issued, bytes]:
        """Issue for a key generated here; returns the certificate and the PKCS#8 DER key."""
        policy = self.policies.get(label)
        with counted(policy.name, "est"):
            if caller.certificate is not None and caller.basic is None and self.is_ours(caller.certificate):
                record = self._current(policy, caller.certificate)
                who = Authenticated(method="reenroll", device_id=record.device_id, supersedes=record.serial)
            else:
                who = self._authenticate(policy, caller)
            request, device_id, pending_id, who = self._decide(policy, csr_der, who, caller)
            key = generate_key(policy.key_types[0])
            issued = self._issue(policy, dataclasses.replace(request, public_key=key.public_key()), device_id, who,
                                 pending_id)
        pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        return issued, pkcs8

    def reenroll(self, label: str, csr_der: bytes, caller: Caller) -> Issued:
        """Renew or rekey with the current certificate; the old one is revoked after the grace period."""
        policy = self.policies.get(label)
        with counted(policy.name, "est"):
            return self._reenroll(policy, csr_der, caller)

    def _reenroll(self, policy: Policy, csr_der: bytes, caller: Caller) -> Issued:
        if caller.certificate is None:
            raise DeviceCAError(Kind.UNAUTHORIZED, "re-enrollment needs the current certificate as TLS client certificate")
        if not self.is_ours(caller.certificate):
            raise DeviceCAError(Kind.UNAUTHORIZED, "client certificate was not issued by this CA")
        record = self._current(policy, caller.certificate)
        csr = csrs.load(csr_der)
        if csr.subject.public_bytes() != caller.certificate.subject.public_bytes():
            raise DeviceCAError(Kind.FORBIDDEN, "CSR subject differs from the current certificate's (RFC 7030 §4.2.2)")
        if set(csr.sans) != set(_sans(caller.certificate)):
            raise DeviceCAError(Kind.FORBIDDEN, "CSR subjectAltName differs from the current certificate's")
        links = IssuanceLinks(supersedes=record.serial,
                              supersede_revoke_after=self.clock.now() + policy.rotation_grace)
        request, device_id = decide(policy, csr, record.device_id, "reenroll")
        return self.ra.issue_order(Order(request, device_id, policy.name, "reenroll", f"device:{device_id}",
                                         messages=lambda r: issued_messages(policy, r), links=links))

    # -- steps -----------------------------------------------------------------------------

    def _decide(self, policy: Policy, csr_der: bytes, who: Authenticated,
                caller: Caller) -> tuple[CertificateRequest, str, str | None, Authenticated]:
        """Check the CSR and the device it names before anything is stored; approval if the policy
        wants it. Returns the certificate the policy gives the device, its id, the approved request
        and the caller (with the certificate a factory re-enrollment replaces, if the policy allows it)."""
        csr = csrs.load(csr_der)
        request, device_id = decide(policy, csr, who.device_id, who.method)
        if who.method == "idevid":
            _check_idevid_identity(caller.certificate, device_id)
            links = replacing(policy, device_id, self.store.current_certificates(policy.name, [device_id]),
                              policy.idevid_reenroll == "replace", self.clock.now())
            if links is not None:
                who = dataclasses.replace(who, supersedes=links.supersedes)
        pending_id = self._approval(policy, device_id, csr, who) if policy.require_approval else None
        return request, device_id, pending_id, who

    def _authenticate(self, policy: Policy, caller: Caller) -> Authenticated:
        if caller.basic is not None:
            username, secret = caller.basic
            token = self.store.enrollment.find_token(_sha256(secret))
            now = self.clock.now()
            if token is None or token.device_id != username or token.policy != policy.name \
                    or token.state(now) != "open":
                log.warning("EST %s: refused bootstrap credentials for %r from %s", policy.name, username,
                            caller.address)
                raise DeviceCAError(Kind.UNAUTHORIZED, BAD_TOKEN)
            method = "bootstrap-token"
            who = Authenticated(method=method, device_id=token.device_id, token_id=token.id)
        elif caller.certificate is not None:
            if self.is_ours(caller.certificate):
                raise DeviceCAError(Kind.FORBIDDEN, "this device already has a certificate: use simplereenroll")
            if not self._from_manufacturer(policy, caller.certificate):
                log.warning("EST %s: IDevID %s from %s not trusted", policy.name,
                            caller.certificate.issuer.rfc4514_string(), caller.address)
                raise DeviceCAError(Kind.UNAUTHORIZED, "client certificate is not from a manufacturer this policy trusts")
            method = "idevid"
            who = Authenticated(method=method, device_id=None)
        else:
            raise DeviceCAError(Kind.UNAUTHORIZED, "credentials required: bootstrap token or factory certificate")
        check_method(policy, method)
        return who

    def _approval(self, policy: Policy, device_id: str, csr: csrs.CsrInfo, who: Authenticated) -> str:
        digest = hashlib.sha256(csr.der).hexdigest()
        request = self.store.enrollment.pending_for(policy.name, device_id, digest)
        if request is None:
            request = self.store.enrollment.add_pending(PendingRequest(
                id=secrets.token_hex(6), policy=policy.name, device_id=device_id, csr_sha256=digest, csr_der=csr.der,
                method=who.method, state="pending", created_at=self.clock.now(), decided_at=None, decided_by=None,
                serial=None), actor=f"device:{device_id}")
        if request.state == "pending":
            raise DeviceCAError(Kind.PENDING, f"enrollment request {request.id} awaits approval")
        if request.state == "rejected":
            raise DeviceCAError(Kind.FORBIDDEN, f"enrollment request {request.id} was rejected")
        if request.state == "issued":
            raise DeviceCAError(Kind.CONFLICT, f"enrollment request {request.id} was already issued")
        return request.id

    def _issue(self, policy: Policy, request: CertificateRequest, device_id: str, who: Authenticated,
               pending_id: str | None) -> Issued:
        """Sign what ``_decide`` checked (the policy's checks are not run a second time)."""
        links = IssuanceLinks(token_id=who.token_id, pending_id=pending_id, supersedes=who.supersedes,
                              supersede_revoke_after=self.clock.now() + policy.rotation_grace
                              if who.supersedes else None)
        try:
            return self.ra.issue_order(Order(request, device_id, policy.name, who.method, f"device:{device_id}",
                                             messages=lambda record: issued_messages(policy, record), links=links))
        except Exception as exc:
            # The token is claimed with the serial reservation; give it back unless another
            # request holds it (then this one never claimed it) or it was used meanwhile.
            if who.token_id is not None and not (isinstance(exc, DeviceCAError) and exc.kind is Kind.UNAUTHORIZED):
                try:
                    self.store.enrollment.release_token(who.token_id)
                except DeviceCAError as release_error:   # e.g. the database is down: the claim expires
                    log.warning("could not release token %s: %s", who.token_id, release_error)
            raise

    def is_ours(self, certificate: x509.Certificate) -> bool:
        """Whether an issuing CA generation still trusted signed ``certificate`` (a certificate of a
        revoked or retired generation is not: it re-enrolls nowhere)."""
        for issuing in self._issuing_cas():
            if certificate.issuer != issuing.subject:
                continue
            try:
                certificate.verify_directly_issued_by(issuing)
                return True
            except (ValueError, TypeError, InvalidSignature):
                continue
        return False

    def _current(self, policy: Policy, certificate: x509.Certificate):
        from device_ca.ca.serial import to_hex

        record = self.store.certificate(to_hex(certificate.serial_number))
        now = self.clock.now()
        if record is None:
            raise DeviceCAError(Kind.UNAUTHORIZED, "client certificate is unknown to this CA")
        if record.status != "good":
            raise DeviceCAError(Kind.FORBIDDEN, f"client certificate is {record.status}")
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise DeviceCAError(Kind.FORBIDDEN, "client certificate is expired or not yet valid")
        if record.policy != policy.name:
            raise DeviceCAError(Kind.FORBIDDEN, f"client certificate belongs to policy {record.policy}, not {policy.name}")
        if record.superseded_by is not None:           # renewal stays linear: only the newest renews
            raise DeviceCAError(Kind.FORBIDDEN, f"client certificate was already renewed (by {record.superseded_by}); "
                                "renew with the newest certificate")
        return record

    def _from_manufacturer(self, policy: Policy, certificate: x509.Certificate) -> bool:
        now = self.clock.now()
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            return False
        for ca in _manufacturer_cas(policy.manufacturer_cas):
            try:
                certificate.verify_directly_issued_by(ca)
                return True
            except (ValueError, TypeError, InvalidSignature):
                continue
        return False


@lru_cache(maxsize=64)
def _manufacturer_cas(files: tuple[Path, ...]) -> tuple[x509.Certificate, ...]:
    certs: list[x509.Certificate] = []
    for f in files:
        certs.extend(x509.load_pem_x509_certificates(Path(f).read_bytes()))
    return tuple(certs)


def _check_idevid_identity(idevid: x509.Certificate, device_id: str) -> None:
    """The factory certificate must name the device (serialNumber or CN) that the CSR asks for."""
    names = [a.value for oid in (x509.NameOID.SERIAL_NUMBER, x509.NameOID.COMMON_NAME)
             for a in idevid.subject.get_attributes_for_oid(oid)]
    if device_id not in names:
        raise DeviceCAError(Kind.FORBIDDEN, f"factory certificate does not name device {device_id}")


def _sans(certificate: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def generate_key(key_type: str):
    kind, _, size = key_type.partition(":")
    if kind == "ec":
        return ec.generate_private_key({"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(),
                                        "P-521": ec.SECP521R1()}[size])
    return rsa.generate_private_key(public_exponent=65537, key_size=int(size))


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
