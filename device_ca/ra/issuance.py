"""The one issuance pipeline: every certificate device-ca signs (CLI ``issue``, EST enroll, re-enroll
and server-side key generation, ``bulk issue``, the batch API, the server's own TLS certificate)
goes through ``Pipeline.issue``.

The cycle follows boulder's RA -> CA -> SA: decide (``decide``: the policy, the enrollment method,
the device id; the edge's own authentication before it), build the TBSCertificate and lint it
(``Issuer.prepare``: template or builder, pre-issuance lint), reserve (serials, intents with their
audit events, claimed tokens and batch items: one durable transaction), sign on the token, verify
the signature, record (certificates, devices, links, audit, outbox: a second durable transaction).
It takes a list of orders, so single issuance is a group of one and a bulk chunk is a group of
hundreds: two commits per group either way, and concurrent groups of one process share their
commits (group_commit.py).

A crash or a failed write after the reservation leaves reserved serials without certificates,
which ``reconcile`` lists; a serial once reserved is never used for another certificate. Named
failpoints (failpoints.py) let the tests stop the pipeline at each step.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca import csr as csrs
from device_ca.ca.clock import Clock
from device_ca.ca.issuer import CertificateRequest, Issuer, Prepared
from device_ca.ca.serial import new_serial, to_hex
from device_ca import metrics
from device_ca.errors import DeviceCAError, Kind, rejected
from device_ca.policy import Policy, checks
from device_ca.ra.failpoints import NONE, Failpoints
from device_ca.ra.group_commit import GroupCommit
from device_ca.store import (AuditEvent, CertificateRecord, IssuanceLinks, OutboxMessage, Recorded, Reservation,
                             Reserved, SerialInUse)
from device_ca.store.issuance import IssuanceRepo

log = logging.getLogger("device_ca.ra.issuance")

SERIAL_ATTEMPTS = 3

# The enrollment method a policy must list for each way of asking (re-enrollment needs none: the
# device proves it holds a good certificate of the policy).
_NEEDS = {"admin": "admin", "bulk": "bulk", "bootstrap-token": "bootstrap-token", "idevid": "idevid",
          "reenroll": None}


def check_method(policy: Policy, method: str) -> None:
    """May a certificate of ``policy`` be obtained by ``method``? FORBIDDEN if not. A certificate
    that authorises its holder as a caller (a station of the batch API) is issued by an operator,
    one at a time (``device-ca issue``), whatever else the policy file lists."""
    if policy.authorizes and method != "admin":
        raise DeviceCAError(Kind.FORBIDDEN, f"certificates of policy {policy.name} authorise callers "
                            f"({', '.join(policy.authorizes)}): only an operator issues them, with device-ca issue")
    needed = _NEEDS.get(method, method)
    if needed is not None and needed not in policy.enrollment:
        raise DeviceCAError(Kind.FORBIDDEN, f"policy {policy.name} does not allow enrollment by {needed}")
    if method == "bulk" and policy.require_approval:     # never issued past the approval it requires
        raise DeviceCAError(Kind.FORBIDDEN, f"policy {policy.name} requires an operator's approval of each "
                            "enrollment; it is not issued in bulk")


def decide(policy: Policy, csr: csrs.CsrInfo, device_id: str | None, method: str) -> tuple[CertificateRequest, str]:
    """What ``policy`` gives the device that sent ``csr`` (its signature already checked when it was
    loaded): the certificate request and the device id (from the CSR subject when not given)."""
    check_method(policy, method)
    if device_id is None:
        device_id = checks.device_id_from_subject(policy, csr.subject)
        if device_id is None:
            raise rejected("no device id given and none found in the CSR subject")
    return checks.apply(policy, csr, device_id), device_id


# How a certificate was asked for, by enrollment method: the ``path`` of the issuance counter.
PATHS = {"admin": "cli", "bulk": "bulk", "bootstrap-token": "est", "idevid": "est", "reenroll": "est"}


def count(policy: str, path: str, error: BaseException | None = None, n: int = 1) -> None:
    """Count ``n`` requests for certificates of ``policy`` (a known policy's name, never what a client
    sent) that came by ``path``: issued, or refused / failed with ``error``'s kind."""
    kind = error.kind if isinstance(error, DeviceCAError) else None if error is None else Kind.INTERNAL
    metrics.issuance(policy, path, kind, n)


@contextlib.contextmanager
def counted(policy: str, path: str) -> Iterator[None]:
    """One request of ``policy`` by ``path``: issued when the block returns, else refused or failed."""
    try:
        yield
    except Exception as exc:
        count(policy, path, exc)
        raise
    count(policy, path)


ALREADY = "device already has a valid certificate"


def replacing(policy: Policy, device_id: str, current: dict[str, str], replace: bool,
              now: dt.datetime) -> IssuanceLinks | None:
    """The existing identity: a device that holds a current certificate of ``policy`` (``current``:
    device id -> serial, from Store.current_certificates) gets a new one only as a replacement, which
    supersedes the current one like a re-enrollment (grace, then revoked ``superseded``). FORBIDDEN
    unless ``replace``; the links for the recording transaction otherwise (None: nothing to replace)."""
    serial = current.get(device_id)
    if serial is None:
        return None
    if not replace:
        raise DeviceCAError(Kind.FORBIDDEN, f"{ALREADY} ({serial}); it renews with its current certificate, or "
                            "is replaced only when replacement is asked for and allowed")
    return IssuanceLinks(supersedes=serial, supersede_revoke_after=now + policy.rotation_grace)


@dataclass(frozen=True, slots=True)
class Order:
    """One certificate to sign, as decided."""
    request: CertificateRequest
    device_id: str
    policy: str
    method: str
    actor: str
    messages: Callable[[CertificateRecord], tuple[OutboxMessage, ...]] | None = None
    links: IssuanceLinks | None = None
    batch_id: str | None = None
    resume: tuple[str, dt.datetime, dt.datetime] | None = None   # a batch item's serial and dates reserved earlier


@dataclass(frozen=True, slots=True)
class Issued:
    record: CertificateRecord
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(Encoding.PEM)


class Pipeline:
    def __init__(self, store: IssuanceRepo, reservation: Callable[[str], Reservation | None],
                 issuer: Callable[[], Issuer], clock: Clock, serials: Callable[[], int] = new_serial,
                 failpoints: Failpoints = NONE):
        self.store = store
        self._reservation = reservation
        self.issuer = issuer              # the issuing CA, built on first use (the token opened in this process)
        self.clock = clock
        self.serials = serials
        self.failpoints = failpoints
        # concurrent issuances of this process share their two transactions (group_commit.py)
        self._reserving = GroupCommit(lambda parts: store.reserve([r for p in parts for r in p[0]],
                                                                  [a for p in parts for a in p[1]]))
        self._recording = GroupCommit(lambda parts: store.record([r for p in parts for r in p]))

    def refused(self, orders: list[Order]) -> dict[str, DeviceCAError]:
        """device id -> why its order's key may not be certified: a key blocked after keyCompromise,
        or one certified for another device already (two devices never share a key)."""
        if not orders:
            return {}
        keys = {o.device_id: hashlib.sha256(csrs.public_key_der(o.request.public_key)).hexdigest() for o in orders}
        reasons = self.store.key_refusals(keys)
        first: dict[str, str] = {}
        for device, digest in keys.items():                 # within the group too
            if first.setdefault(digest, device) != device:
                reasons.setdefault(device, f"the key is also asked for by {first[digest]}; each device has a key "
                                           "of its own")
        return {device: DeviceCAError(Kind.POLICY_REJECTED, reason) for device, reason in reasons.items()}

    def issue(self, orders: list[Order]) -> list[Issued]:
        """Reserve, sign, verify and record ``orders`` as one group (two transactions); nothing at
        all if one of them carries a key that may not be certified (see ``refused``)."""
        for device, error in self.refused(orders).items():
            log.warning("issuance refused for %s: %s", device, error.detail)
            raise error
        return self._issue(orders)

    def issue_allowed(self, orders: list[Order]) -> tuple[list[Issued], dict[str, DeviceCAError]]:
        """``orders`` as a group of items that fail alone (a bulk chunk): those whose key may not be
        certified are refused, the others issued; (issued, refusals by device id)."""
        refused = self.refused(orders)
        return self._issue([o for o in orders if o.device_id not in refused]), refused

    def _issue(self, orders: list[Order]) -> list[Issued]:
        if not orders:
            return []
        issuer = self.issuer()
        prepared = self._reserve(issuer, orders)
        devices = [o.device_id for o in orders]
        self.failpoints.hit("after-reserve", devices)
        certificates = [self._sign(issuer, o, p) for o, p, _ in prepared]
        self.failpoints.hit("after-sign", devices)
        return self._record(issuer, prepared, certificates)

    # -- reserve -------------------------------------------------------------------------------

    def _reserve(self, issuer: Issuer, orders: list[Order]) -> list[tuple[Order, Prepared, str]]:
        """Build and lint every TBS, then reserve the new serials in one transaction. An order that
        resumes a reservation of an earlier run keeps it if the same TBS comes out (same CSR, serial
        and dates), else gives it up and is reserved anew. Returns each order with its prepared
        certificate and its subject as a string (RFC 4514)."""
        kept: dict[int, Prepared] = {}
        abandon: list[str] = []
        for i, order in enumerate(orders):
            if order.resume is None:
                continue
            serial, not_before, not_after = order.resume
            again = issuer.prepare(order.request, int(serial, 16), (not_before, not_after))
            stored = self._reservation(serial)
            if stored is not None and stored.state == "reserved" \
                    and stored.tbs_sha256 == hashlib.sha256(again.tbs).hexdigest():
                kept[i] = again
            else:
                log.warning("%s: reservation %s cannot be reproduced; reserving anew", order.device_id, serial)
                abandon.append(serial)
        fresh = [i for i in range(len(orders)) if i not in kept]
        for _ in range(SERIAL_ATTEMPTS):
            now = self.clock.now()
            built: dict[int, tuple[Prepared, str]] = {}
            reserved = []
            for i in fresh:
                order = orders[i]
                p = issuer.prepare(order.request, self._draw_serial(order))
                built[i] = (p, p.subject.rfc4514_string())
                reserved.append(_reserved(issuer, order, p, built[i][1], now))
            try:
                self._reserving.submit((reserved, abandon))
                break
            except SerialInUse:
                log.error("a drawn serial was already reserved; drawing again")
        else:
            raise DeviceCAError(Kind.INTERNAL, "could not reserve a unique serial number")
        built.update((i, (p, p.subject.rfc4514_string())) for i, p in kept.items())
        return [(order, *built[i]) for i, order in enumerate(orders)]

    def _draw_serial(self, order: Order) -> int:
        try:
            return self.serials()
        except Exception as exc:
            log.error("serial randomness failed for device %s (actor %s): %s", order.device_id, order.actor, exc)
            raise DeviceCAError(Kind.INTERNAL, "serial randomness failed; nothing was signed", cause=exc) from None

    # -- sign ----------------------------------------------------------------------------------

    def _sign(self, issuer: Issuer, order: Order, prepared: Prepared) -> x509.Certificate:
        """The token signs the linted TBS; the signature is verified (Issuer.sign) before it counts."""
        log.info("signing certificate %s for %s", to_hex(prepared.serial), order.device_id)
        self.failpoints.hit("sign", (order.device_id,))
        try:
            return issuer.sign(prepared)
        except DeviceCAError:
            raise
        except Exception as exc:   # a signer that is not the token's (the token's errors are translated)
            log.error("signer failed on %s: %s", to_hex(prepared.serial), exc)
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, f"signer failed ({type(exc).__name__}); nothing was issued",
                                cause=exc) from None

    # -- record --------------------------------------------------------------------------------

    def _record(self, issuer: Issuer, prepared: list[tuple[Order, Prepared, str]],
                certificates: list[x509.Certificate]) -> list[Issued]:
        now = self.clock.now()
        recorded, issued = [], []
        for (order, p, subject), certificate in zip(prepared, certificates):
            der = certificate.public_bytes(Encoding.DER)
            record = CertificateRecord(
                serial=to_hex(p.serial), issuer=issuer.urls.ca_name, device_id=order.device_id, policy=order.policy,
                subject=subject, status="good", not_before=p.not_before, not_after=p.not_after,
                fingerprint=hashlib.sha256(der).hexdigest(), der=der, issued_at=now,
                spki_sha256=hashlib.sha256(p.public_key_der).hexdigest())
            details = {"policy": order.policy, "method": order.method, "fingerprint": record.fingerprint,
                       "not_after": record.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")}
            if order.batch_id is not None:
                details["batch"] = order.batch_id
            if order.links is not None and order.links.supersedes:
                details["supersedes"] = order.links.supersedes
                if order.method != "reenroll":
                    details["replacement"] = True
            if order.links is not None and order.links.scope is not None:
                details["scope"] = order.links.scope.as_dict()
            if order.links is not None and order.links.role is not None:
                details["role"] = order.links.role
            recorded.append(Recorded(
                certificate=record, links=order.links, batch_id=order.batch_id,
                messages=tuple(order.messages(record)) if order.messages else (),
                event=AuditEvent(action="certificate.issued", actor=order.actor, at=now, serial=record.serial,
                                 device_id=order.device_id, details=details)))
            issued.append(Issued(record, certificate))
        devices = [o.device_id for o, _, _ in prepared]
        serials = ", ".join(r.certificate.serial for r in recorded)
        try:
            self.failpoints.hit("before-record", devices)
            self.failpoints.hit("record", devices)
            self._recording.submit(recorded)
        except DeviceCAError as exc:
            log.error("certificates %s signed but not recorded: %s", serials, exc)
            if exc.kind is Kind.CONFLICT:        # a credential was used meanwhile
                raise DeviceCAError(Kind.UNAUTHORIZED, f"{exc.detail}; certificate {serials} was not issued",
                                    cause=exc) from None
            kind = Kind.DB_UNAVAILABLE if exc.kind is Kind.DB_UNAVAILABLE else Kind.INTERNAL
            raise DeviceCAError(kind, f"certificate {serials} was signed but could not be recorded; "
                                "it is not valid and is listed by 'device-ca reconcile'", cause=exc) from None
        except Exception as exc:
            log.error("certificates %s signed but not recorded: %s", serials, exc)
            raise DeviceCAError(Kind.INTERNAL, f"certificate {serials} was signed but could not be recorded; "
                                "it is not valid and is listed by 'device-ca reconcile'", cause=exc) from None
        return issued


def _reserved(issuer: Issuer, order: Order, prepared: Prepared, subject: str, now: dt.datetime) -> Reserved:
    serial, tbs_sha256 = to_hex(prepared.serial), hashlib.sha256(prepared.tbs).hexdigest()
    details = {"policy": order.policy, "method": order.method, "tbs_sha256": tbs_sha256, "subject": subject}
    if order.batch_id is not None:
        details["batch"] = order.batch_id
    return Reserved(
        reservation=Reservation(serial=serial, issuer=issuer.urls.ca_name, device_id=order.device_id,
                                policy=order.policy, tbs_sha256=tbs_sha256, state="reserved", reserved_at=now),
        event=AuditEvent(action="certificate.intent", actor=order.actor, at=now, serial=serial,
                         device_id=order.device_id, details=details),
        claim_token=order.links.token_id if order.links else None, batch_id=order.batch_id,
        not_before=prepared.not_before if order.batch_id else None,
        not_after=prepared.not_after if order.batch_id else None,
        previous_serial=order.resume[0] if order.resume else None)


def issued_messages(policy: Policy, record: CertificateRecord) -> tuple[OutboxMessage, ...]:
    """What Keycloak must learn of a newly issued certificate of ``policy``."""
    if policy.keycloak is None:
        return ()
    return (OutboxMessage(topic="keycloak.upsert", device_id=record.device_id,
                          payload={"serial": record.serial, "policy": policy.name, "realm": policy.keycloak.realm}),)
