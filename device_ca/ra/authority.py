"""The registration authority: the operator's issue, revoke (RFC 5280 §5.3.1 reasons), decommission,
approve/reject and reconcile workflows. Issuing goes through the one pipeline (issuance.py).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Callable

from device_ca.ca import crl
from device_ca.ca import csr as csrs
from device_ca.ca.clock import Clock
from device_ca.ca.issuer import Issuer
from device_ca.ca.serial import from_hex, new_serial, to_hex
from device_ca.errors import DeviceCAError, Kind, malformed
from device_ca.policy import Policies, Policy
from device_ca.ra.failpoints import NONE, Failpoints
from device_ca.ra.issuance import PATHS, Issued, Order, Pipeline, counted, decide, issued_messages
from device_ca.ra.operators import role_for
from device_ca.ra.stations import scope_for
from device_ca.store import CertificateRecord, IssuanceLinks, OutboxMessage, PendingRequest, Reservation, Store

log = logging.getLogger("device_ca.ra")

REASONS = crl.REASONS     # RFC 5280 §5.3.1 names; certificateHold and removeFromCRL are left out


def check_reason(reason: str) -> str:
    if reason not in REASONS:
        raise malformed(f"unknown revocation reason {reason!r} (one of: {', '.join(REASONS)})")
    return reason


def check_serial(serial: str) -> str:
    """An operator's serial (hex, optional 0x, colons or spaces) as the database keeps it; MALFORMED
    if it is not one."""
    try:
        return to_hex(from_hex(serial))
    except ValueError as exc:
        raise DeviceCAError(Kind.MALFORMED, str(exc)) from None


def find_certificate(store: Store, serial: str) -> CertificateRecord:
    """The certificate an operator names by ``serial`` (see ``check_serial``); NOT_FOUND if none."""
    record = store.certificate(check_serial(serial))
    if record is None:
        raise DeviceCAError(Kind.NOT_FOUND, f"no certificate with serial {serial}")
    return record


class RegistrationAuthority:
    def __init__(self, store: Store, policies: Policies, issuer: Callable[[], Issuer], clock: Clock,
                 serials: Callable[[], int] = new_serial, failpoints: Failpoints = NONE):
        self.store = store
        self.policies = policies
        self.clock = clock
        self.pipeline = Pipeline(store.issuance, store.reservation, issuer, clock, serials, failpoints)

    # -- issue -----------------------------------------------------------------------------

    def issue(self, policy_name: str, csr_data: bytes | csrs.CsrInfo, *, device_id: str | None = None, actor: str,
              method: str = "admin", links: IssuanceLinks | None = None, allow_policies: tuple[str, ...] = (),
              allow_devices: str | None = None, role: str | None = None) -> Issued:
        """Check the CSR against the policy and issue; ``links`` are settled in the recording transaction.
        A station certificate (its policy authorises the batch API) is issued with its scope:
        ``allow_policies`` and optionally ``allow_devices``, recorded with it (stations.scope_for); an
        operator certificate (its policy authorises the admin API) with its ``role`` (operators.role_for)."""
        try:
            policy = self.policies.get(policy_name)
        except DeviceCAError as exc:
            log.warning("issuance refused: policy=%s device=%s actor=%s: %s", policy_name, device_id, actor, exc)
            raise
        with counted(policy.name, PATHS.get(method, "cli")):
            try:
                csr = csr_data if isinstance(csr_data, csrs.CsrInfo) else csrs.load(csr_data)
                request, device_id = decide(policy, csr, device_id, method)
                scope = scope_for(policy, allow_policies, allow_devices, self.policies)
                if scope is not None:
                    links = dataclasses.replace(links or IssuanceLinks(), scope=scope)
                role = role_for(policy, role)
                if role is not None:
                    links = dataclasses.replace(links or IssuanceLinks(), role=role)
            except DeviceCAError as exc:
                log.warning("issuance refused: policy=%s device=%s actor=%s: %s", policy_name, device_id, actor, exc)
                raise
            return self.issue_order(Order(request, device_id, policy.name, method, actor,
                                          messages=lambda record: issued_messages(policy, record), links=links))

    def issue_order(self, order: Order) -> Issued:
        """A certificate that has passed its checks (a group of one)."""
        return self.pipeline.issue([order])[0]

    # -- pending approvals -----------------------------------------------------------------

    def decide_pending(self, request_id: str, approve: bool, *, actor: str) -> PendingRequest:
        """Approve (the device's next identical request is issued) or reject a pending enrollment."""
        return self.store.enrollment.decide(request_id, approve, actor, self.clock.now())

    # -- revoke --------------------------------------------------------------------------

    def revoke(self, serial: str, reason: str, *, actor: str) -> CertificateRecord:
        check_reason(reason)
        return self.store.revoke(check_serial(serial), reason, self.clock.now(), actor,
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

    def revoke_superseded(self) -> list[str]:
        """Revoke (reason superseded) every renewed certificate whose grace period is over."""
        done = []
        for serial in self.store.enrollment.due_for_supersede(self.clock.now()):
            try:
                self.revoke(serial, "superseded", actor="system:rotation")
                done.append(serial)
            except DeviceCAError as exc:
                if exc.kind is not Kind.CONFLICT:
                    raise
        return done

    def _policy_or_none(self, name: str) -> Policy | None:
        try:
            return self.policies.get(name)
        except DeviceCAError:
            return None

    # -- reconcile -----------------------------------------------------------------------

    def reconcile(self, grace: dt.timedelta = dt.timedelta(minutes=5)) -> list[Reservation]:
        """Serials reserved longer than ``grace`` ago that have no certificate recorded."""
        return self.store.unfinished_reservations(self.clock.now() - grace)


def _revoked_messages(policy: Policy | None, record: CertificateRecord) -> list[OutboxMessage]:
    # A superseded certificate was replaced by a newer one of the same device: its client stays.
    if policy is None or policy.keycloak is None or record.revocation_reason == "superseded":
        return []
    return [OutboxMessage(topic="keycloak.disable", device_id=record.device_id,
                          payload={"serial": record.serial, "policy": policy.name, "realm": policy.keycloak.realm,
                                   "reason": record.revocation_reason})]
