"""Operators of the REST API: who they are and what their role lets them do.

An operator holds a client certificate of a policy that authorises ``admin-api`` (the shipped
``admin`` policy), issued on the CA host by ``device-ca issue --policy admin --role ROLE``; the role
is recorded with the certificate (``role_for``), like a station's scope. On every request the
certificate is looked up again (``Operators.authenticate``): it must be the very certificate this CA
recorded, good, unexpired and not renewed, so a revocation ends the operator's access at once.
The role comes from the database, never from the certificate or the request; ``PERMISSIONS`` is
the one table of what each role may do.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca.serial import to_hex
from device_ca.errors import DeviceCAError, Kind
from device_ca.policy import Policy

GRANT = "admin-api"                  # what an operator's policy must authorise (policy key 'authorizes')
ROLES = ("viewer", "operator", "security-officer")
ACTOR_MAX = 128                      # the audit log's actor column

# Actions, as the API checks them.
READ = "read"
TOKEN_CREATE, TOKEN_WITHDRAW = "token.create", "token.withdraw"
PENDING_DECIDE = "pending.decide"
REVOKE, REVOKE_KEY_COMPROMISE = "certificate.revoke", "certificate.revoke-key-compromise"
DECOMMISSION = "device.decommission"
BATCH_SUBMIT = "batch.submit"
KEY_BLOCK, CA_ROLLOVER = "key.block", "ca.rollover"      # not offered by the API yet; the CLI does them
OPERATOR_REVOKE = "operator.revoke"       # revoking (or decommissioning) an operator's own certificate

_VIEWER = frozenset({READ})
_OPERATOR = _VIEWER | {TOKEN_CREATE, TOKEN_WITHDRAW, PENDING_DECIDE, REVOKE, DECOMMISSION, BATCH_SUBMIT}
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": _VIEWER,
    "operator": _OPERATOR,
    "security-officer": _OPERATOR | {REVOKE_KEY_COMPROMISE, KEY_BLOCK, CA_ROLLOVER, OPERATOR_REVOKE},
}


def role_for(policy: Policy, role: str | None) -> str | None:
    """The role of an operator certificate of ``policy`` being issued (None for any other
    certificate). MALFORMED if an operator certificate comes without a known role, or another
    certificate with one."""
    if GRANT not in policy.authorizes:
        if role is not None:
            raise DeviceCAError(Kind.MALFORMED, f"--role is given to operator certificates; certificates of policy "
                                f"{policy.name} do not authorise the admin API")
        return None
    if role is None:
        raise DeviceCAError(Kind.MALFORMED, f"a {policy.name} certificate is issued with its role: "
                            f"--role {'|'.join(ROLES)}")
    if role not in ROLES:
        raise DeviceCAError(Kind.MALFORMED, f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    return role


def revoke_action(reason: str) -> str:
    """What revoking for ``reason`` asks of the operator's role."""
    return REVOKE_KEY_COMPROMISE if reason == "keyCompromise" else REVOKE


def revoke_actions(reason: str, operator_certificates: bool) -> tuple[str, ...]:
    """Everything revoking for ``reason`` asks of the role; ``operator_certificates``: whether an
    operator's certificate is among those revoked. Only a security officer revokes an operator's
    certificate through the API or console, so that an operator cannot lock a security officer
    (or another operator) out; on the CA host, ``device-ca revoke`` still does."""
    return (REVOKE_KEY_COMPROMISE if reason == "keyCompromise" else REVOKE,) + \
        ((OPERATOR_REVOKE,) if operator_certificates else ())


def decommission_actions(store, records) -> tuple[str, ...]:
    """Everything decommissioning a device whose certificates are ``records`` asks of the role:
    a security officer's too if one of them is an operator's (see ``revoke_actions``)."""
    return (DECOMMISSION,) + ((OPERATOR_REVOKE,) if any(store.operator_role(r.serial) is not None
                                                          for r in records) else ())


@dataclass(frozen=True)
class Operator:
    serial: str
    subject: str
    role: str
    fingerprint: str = ""       # SHA-256 of the certificate (hex): what the console binds its CSRF tokens to

    @property
    def actor(self) -> str:
        """Who the audit log names for a change this operator made (at most ACTOR_MAX characters:
        the subject is shortened, never the serial)."""
        suffix = f" serial {self.serial}"
        return f"operator:{self.subject}"[:ACTOR_MAX - len(suffix)] + suffix

    def may(self, action: str) -> bool:
        return action in PERMISSIONS.get(self.role, frozenset())

    def authorize(self, action: str) -> None:
        """FORBIDDEN unless the operator's role allows ``action``."""
        if not self.may(action):
            raise DeviceCAError(Kind.FORBIDDEN, f"role {self.role} may not {action}")


class Operators:
    """The operator holding a client certificate (already verified by TLS against the CA bundle)."""

    def __init__(self, store, policies, clock, is_ours: Callable[[x509.Certificate], bool]):
        self.store = store
        self.policies = policies
        self.clock = clock
        self.is_ours = is_ours

    def authenticate(self, certificate: x509.Certificate | None) -> Operator:
        """UNAUTHORIZED without a certificate; FORBIDDEN for one that is not a current operator's."""
        if certificate is None:
            raise DeviceCAError(Kind.UNAUTHORIZED, "an operator's client certificate is required")
        refused = DeviceCAError(Kind.FORBIDDEN, "this client certificate is not a current operator's")
        if not self.is_ours(certificate):
            raise refused
        record = self.store.certificate(to_hex(certificate.serial_number))
        if record is None or record.der != certificate.public_bytes(Encoding.DER):
            raise refused
        if record.status != "good" or record.not_after <= self.clock.now() or record.superseded_by is not None:
            raise refused
        try:
            granted = self.policies.get(record.policy).authorizes
        except DeviceCAError:                          # its policy file is gone: it authorises nothing
            granted = ()
        role = self.store.operator_role(record.serial) if GRANT in granted else None
        if role not in PERMISSIONS:
            raise refused
        return Operator(serial=record.serial, subject=record.subject, role=role,
                        fingerprint=hashlib.sha256(record.der).hexdigest())
