"""What Keycloak should hold for the fleet, computed from the certificate store and the policies.

For a device in a realm (the realm of the policies its certificates were issued under):

- enabled, for the newest certificate that is good and unexpired, unless a certificate of the
  device was revoked (for any reason but ``superseded``) after that one was issued, or the
  device was decommissioned;
- disabled otherwise: revoked, expired, decommissioned, or its policy no longer maps to the realm.

Disabling also sets the client's not-before to now (introspection then answers ``active: false``
for every token issued before) and ends its service account's sessions (sync.py).

Revoking any certificate of a device disables its client because Keycloak matches the subject DN
and the chain only, never the key or the revocation status: another certificate with the same
subject would still get tokens.
"""
from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Callable, Iterable

from cryptography import x509

from device_ca.keycloak.representation import DesiredClient
from device_ca.policy.model import KeycloakMapping
from device_ca.store import CertificateRecord


def desired_clients(records: Iterable[CertificateRecord], mapping_of: Callable[[str], KeycloakMapping | None],
                    trust_anchor: x509.Certificate, now: dt.datetime,
                    retired: frozenset[str] = frozenset(),
                    realms_of_device: dict[str, set[str]] | None = None) -> dict[tuple[str, str], DesiredClient]:
    """(realm, device id) -> the client it should have. ``realms_of_device`` adds realms in which a
    device should at least be disabled (a realm its policy mapped to when an outbox row was written)."""
    by_device: dict[tuple[str, str], list[CertificateRecord]] = defaultdict(list)
    for record in records:
        mapping = mapping_of(record.policy)
        if mapping is not None:
            by_device[(mapping.realm, record.device_id)].append(record)
    result: dict[tuple[str, str], DesiredClient] = {}
    for (realm, device_id), certificates in by_device.items():
        result[(realm, device_id)] = _desired(realm, device_id, certificates, mapping_of, trust_anchor, now,
                                              device_id in retired)
    for device_id, realms in (realms_of_device or {}).items():
        for realm in realms:
            result.setdefault((realm, device_id), DesiredClient.disabled(realm, device_id, int(now.timestamp())))
    return result


def _desired(realm: str, device_id: str, certificates: list[CertificateRecord],
             mapping_of: Callable[[str], KeycloakMapping | None], trust_anchor: x509.Certificate,
             now: dt.datetime, retired: bool) -> DesiredClient:
    void = int(now.timestamp())
    if retired:
        return DesiredClient.disabled(realm, device_id, void)
    current = max((r for r in certificates if r.status == "good" and r.not_before <= now < r.not_after),
                  key=lambda r: (r.issued_at, r.serial), default=None)
    if current is None:
        return DesiredClient.disabled(realm, device_id, void)
    revoked_since = [r for r in certificates if r.status == "revoked" and r.revocation_reason != "superseded"
                     and r.revoked_at is not None and r.revoked_at >= current.issued_at]
    if revoked_since:
        return DesiredClient.disabled(realm, device_id, void)
    return DesiredClient.for_certificate(mapping_of(current.policy), device_id,
                                         x509.load_der_x509_certificate(current.der), trust_anchor, current.serial,
                                         current.policy)
