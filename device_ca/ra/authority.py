"""The registration authority: the issue, revoke and reconcile workflows.

Issuance follows boulder's cycle: decide (CSR checks and policy), draw a serial, build and lint
the certificate, record the serial and the intent (with an audit event) in one transaction,
sign on the token, verify, then store certificate, status, device, audit and outbox rows in a
second transaction. A crash or a failed write after signing leaves a reservation without a
certificate, which ``reconcile`` reports; a serial once reserved is never used again.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from typing import Callable

from cryptography.hazmat.primitives.serialization import Encoding

from device_ca import policy as policies_
from device_ca.ca import csr as csrs
from device_ca.ca.clock import Clock
from device_ca.ca.issuer import CertificateRequest, Issuer
from device_ca.ca.serial import from_hex, new_serial, to_hex
from device_ca.errors import DeviceCAError, Kind, rejected
from device_ca.policy import Policies, Policy
from device_ca.ra.revocation import check_reason
from device_ca.store import (AuditEvent, CertificateRecord, IssuanceLinks, OutboxMessage, Reservation, SerialInUse,
                             Store)

log = logging.getLogger("device_ca.ra")

SERIAL_ATTEMPTS = 3


@dataclass(frozen=True)
class Issued:
    record: CertificateRecord
    pem: bytes


class RegistrationAuthority:
    def __init__(self, store: Store, policies: Policies, issuer: Callable[[], Issuer], clock: Clock,
                 serials: Callable[[], int] = new_serial):
        self.store = store
        self.policies = policies
        self._issuer = issuer
        self.clock = clock
        self.serials = serials

    # -- issue -----------------------------------------------------------------------------

    def issue(self, policy_name: str, csr_data: bytes | csrs.CsrInfo, *, device_id: str | None = None, actor: str,
              method: str = "admin", links: IssuanceLinks | None = None) -> Issued:
        """Check the CSR against the policy and issue; ``links`` are settled in the recording transaction."""
        try:
            policy = self.policies.get(policy_name)
            if method not in policy.enrollment and method != "reenroll":
                raise DeviceCAError(Kind.FORBIDDEN, f"policy {policy.name} does not allow enrollment by {method}")
            csr = csr_data if isinstance(csr_data, csrs.CsrInfo) else csrs.load(csr_data)
            if device_id is None:
                device_id = policies_.device_id_from_subject(policy, csr.subject)
                if device_id is None:
                    raise rejected("no device id given and none found in the CSR subject")
            request = policies_.apply(policy, csr, device_id)
        except DeviceCAError as exc:
            log.warning("issuance refused: policy=%s device=%s actor=%s: %s", policy_name, device_id, actor, exc)
            raise
        return self.issue_request(request, device_id=device_id, policy_name=policy.name, method=method,
                                  actor=actor, messages=lambda record: issued_messages(policy, record),
                                  links=links)

    def issue_request(self, request: CertificateRequest, *, device_id: str, policy_name: str, method: str,
                      actor: str, messages: Callable[[CertificateRecord], list[OutboxMessage]] = lambda r: [],
                      links: IssuanceLinks | None = None) -> Issued:
        """Reserve, lint, sign, verify and record a certificate that has passed its checks."""
        issuer = self._issuer()
        subject = request.subject.rfc4514_string()          # the certificate's subject, by construction
        for _ in range(SERIAL_ATTEMPTS):
            serial = self._draw_serial(actor, device_id)
            prepared = issuer.prepare(request, serial)
            now = self.clock.now()
            serial_hex = to_hex(serial)
            tbs_sha256 = hashlib.sha256(prepared.tbs).hexdigest()
            try:
                self.store.reserve_serial(
                    Reservation(serial=serial_hex, issuer=issuer.urls.ca_name, device_id=device_id,
                                policy=policy_name, tbs_sha256=tbs_sha256, state="reserved", reserved_at=now),
                    AuditEvent(action="certificate.intent", actor=actor, at=now, serial=serial_hex,
                               device_id=device_id,
                               details={"policy": policy_name, "method": method, "tbs_sha256": tbs_sha256,
                                        "subject": subject}),
                    claim_token=links.token_id if links else None)
                break
            except SerialInUse:
                log.error("serial %s already reserved; drawing another", serial_hex)
        else:
            raise DeviceCAError(Kind.INTERNAL, "could not reserve a unique serial number")
        certificate = self._sign(issuer, prepared, serial_hex, subject)
        der = certificate.public_bytes(Encoding.DER)
        record = CertificateRecord(
            serial=serial_hex, issuer=issuer.urls.ca_name, device_id=device_id, policy=policy_name,
            subject=subject, status="good", not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            fingerprint=hashlib.sha256(der).hexdigest(), der=der, issued_at=self.clock.now())
        try:
            self.store.record_issued(
                record,
                AuditEvent(action="certificate.issued", actor=actor, at=record.issued_at, serial=serial_hex,
                           device_id=device_id,
                           details={"policy": policy_name, "method": method, "fingerprint": record.fingerprint,
                                    "not_after": record.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                    **({"supersedes": links.supersedes} if links and links.supersedes else {})}),
                messages(record), links)
        except DeviceCAError as exc:
            log.error("certificate %s signed but not recorded: %s", serial_hex, exc)
            if exc.kind is Kind.CONFLICT:        # the credential was used meanwhile
                raise DeviceCAError(Kind.UNAUTHORIZED, f"{exc.detail}; certificate {serial_hex} was not issued",
                                    cause=exc) from None
            kind = Kind.DB_UNAVAILABLE if exc.kind is Kind.DB_UNAVAILABLE else Kind.INTERNAL
            raise DeviceCAError(kind, f"certificate {serial_hex} was signed but could not be recorded; "
                                "it is not valid and is listed by 'device-ca reconcile'", cause=exc) from None
        except Exception as exc:
            log.error("certificate %s signed but not recorded: %s", serial_hex, exc)
            raise DeviceCAError(Kind.INTERNAL, f"certificate {serial_hex} was signed but could not be recorded; "
                                "it is not valid and is listed by 'device-ca reconcile'", cause=exc) from None
        return Issued(record=record, pem=certificate.public_bytes(Encoding.PEM))

    def _draw_serial(self, actor: str, device_id: str) -> int:
        try:
            return self.serials()
        except Exception as exc:
            log.error("serial randomness failed for device %s (actor %s): %s", device_id, actor, exc)
            raise DeviceCAError(Kind.INTERNAL, "serial randomness failed; nothing was signed", cause=exc) from None

    @staticmethod
    def _sign(issuer: Issuer, prepared, serial_hex: str, subject: str):
        log.info("signing certificate %s for %s", serial_hex, subject)
        try:
            return issuer.sign(prepared)
        except DeviceCAError:
            raise
        except Exception as exc:   # the signer failed: hsm.HsmError carries a safe one-line message
            log.error("signer failed on %s: %s", serial_hex, exc)
            detail = str(exc) if hasattr(exc, "reason") else type(exc).__name__
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, f"HSM unavailable: {detail}; nothing was issued",
                                cause=exc) from None

    # -- revoke --------------------------------------------------------------------------

    def revoke(self, serial: str, reason: str, *, actor: str) -> CertificateRecord:
        check_reason(reason)
        try:
            serial_hex = to_hex(from_hex(serial))
        except ValueError as exc:
            raise DeviceCAError(Kind.MALFORMED, str(exc)) from None
        return self.store.revoke(serial_hex, reason, self.clock.now(), actor,
                                 lambda record: _revoked_messages(self._policy_or_none(record.policy), record))

    def decommission(self, device_id: str, *, actor: str) -> list[CertificateRecord]:
        """Revoke every good certificate of a device (cessationOfOperation) and retire the device."""
        revoked = []
        for record in self.store.certificates(device_id=device_id, status="good"):
            try:
                revoked.append(self.revoke(record.serial, "cessationOfOperation", actor=actor))
            except DeviceCAError as exc:
                if exc.kind is not Kind.CONFLICT:          # revoked meanwhile: nothing left to do
                    raise
        self.store.retire_device(device_id, self.clock.now(), actor, len(revoked))
        return revoked

    def _policy_or_none(self, name: str) -> Policy | None:
        try:
            return self.policies.get(name)
        except DeviceCAError:
            return None

    # -- reconcile -----------------------------------------------------------------------

    def reconcile(self, grace: dt.timedelta = dt.timedelta(minutes=5)) -> list[Reservation]:
        """Serials reserved longer than ``grace`` ago that have no certificate recorded."""
        return self.store.unfinished_reservations(self.clock.now() - grace)


def issued_messages(policy: Policy, record: CertificateRecord) -> list[OutboxMessage]:
    if policy.keycloak is None:
        return []
    return [OutboxMessage(topic="keycloak.upsert", device_id=record.device_id,
                          payload={"serial": record.serial, "policy": policy.name, "realm": policy.keycloak.realm})]


def _revoked_messages(policy: Policy | None, record: CertificateRecord) -> list[OutboxMessage]:
    # A superseded certificate was replaced by a newer one of the same device: its client stays.
    if policy is None or policy.keycloak is None or record.revocation_reason == "superseded":
        return []
    return [OutboxMessage(topic="keycloak.disable", device_id=record.device_id,
                          payload={"serial": record.serial, "policy": policy.name, "realm": policy.keycloak.realm,
                                   "reason": record.revocation_reason})]
