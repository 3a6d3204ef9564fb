"""Certificate expiry (RFC 5280 §4.1.2.5 notAfter) and each policy's renewal window.

A good certificate is *in its renewal window* from ``notAfter - renewal_window`` until notAfter, and
*expired* from notAfter on. Neither changes what EST answers: a device may renew whenever its
certificate is good, and an expired certificate authenticates nothing anyway (TLS refuses it).

The expiry job (``ExpiryJob.run``, a janitor round under the lease ``janitor:<ca>``) handles each
lapse once (store/expiry.py): the audit event ``certificate.expired`` and, when the policy maps the
device to a Keycloak realm and the device has no other good certificate valid now in that realm, a
``keycloak.disable`` outbox row; the drainer then reconciles the device (keycloak/fleet.py decides
from the store, so a row written while the device re-enrolled does no harm).
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

from device_ca.ca.clock import Clock
from device_ca.errors import DeviceCAError
from device_ca.policy import Policies, Policy
from device_ca.store import CertificateRecord, OutboxMessage, Store
from device_ca.store.expiry import Expiring, ExpiryCounts, Lapsed

log = logging.getLogger("device_ca.ra.expiry")

BATCH = 200               # lapsed certificates per transaction
ROUND_BATCHES = 25        # per janitor round: a backlog (the first round after an upgrade) goes on next round

RENEWAL_WINDOW = "renewal-window"
EXPIRED = "expired"


def _policy(policies: Policies, name: str) -> Policy | None:
    try:
        return policies.get(name)
    except DeviceCAError:
        return None


def renewal_horizons(policies: Policies, now: dt.datetime) -> dict[str, dt.datetime]:
    """policy name -> the notAfter before which its certificates are in their renewal window at ``now``."""
    return {p.name: now + p.renewal_window for p in policies}


def expiry_mark(record: CertificateRecord, policy: Policy | None, now: dt.datetime) -> str | None:
    """What ``list``/``show`` mark a certificate with: expired, in its renewal window (good, not
    renewed), or nothing."""
    if now >= record.not_after:
        return EXPIRED
    if (record.status == "good" and record.superseded_by is None and policy is not None
            and now >= record.not_after - policy.renewal_window):
        return RENEWAL_WINDOW
    return None


def lapsed_messages(policies: Policies, lapsed: Lapsed, live: frozenset[str]) -> list[OutboxMessage]:
    """The Keycloak disable a lapse calls for: none if its policy maps to no realm, or if a policy of
    the device's live certificates (good, valid now) maps it to the same realm."""
    policy = _policy(policies, lapsed.policy)
    if policy is None or policy.keycloak is None:
        return []
    realm = policy.keycloak.realm
    for name in live:
        other = _policy(policies, name)
        if other is not None and other.keycloak is not None and other.keycloak.realm == realm:
            return []
    return [OutboxMessage(topic="keycloak.disable", device_id=lapsed.device_id,
                          payload={"serial": lapsed.serial, "policy": policy.name, "realm": realm,
                                   "reason": "expired"})]


class ExpiryJob:
    def __init__(self, store: Store, policies: Policies, clock: Clock):
        self.store = store
        self.policies = policies
        self.clock = clock

    def run(self, still_holding: Callable[[], bool] = lambda: True, batch: int = BATCH,
            batches: int = ROUND_BATCHES) -> list[Lapsed]:
        """Handle the certificates lapsed by now, a transaction per ``batch``; before each further
        batch, ``still_holding()`` (the janitor extends its lease) must say yes."""
        done: list[Lapsed] = []
        for i in range(batches):
            if i and not still_holding():
                break
            lapsed = self.store.expiry.lapse(self.clock.now(), batch,
                                             lambda x, live: lapsed_messages(self.policies, x, live))
            done += lapsed
            if not lapsed:
                break
        for x in done:
            log.info("certificate %s of %s (%s) expired at %s", x.serial, x.device_id, x.policy,
                     x.not_after.isoformat())
        return done

    def expiring(self, within: dt.timedelta | None = None, policy: str | None = None,
                 include_expired: bool = False) -> list[Expiring]:
        """Good, unrenewed certificates inside their policy's renewal window, or within ``within``."""
        now = self.clock.now()
        if policy is not None:
            self.policies.get(policy)          # NOT_FOUND for a name no policy has
        horizons = now + within if within is not None else renewal_horizons(self.policies, now)
        return self.store.expiry.expiring(now, horizons, policy=policy, include_expired=include_expired)

    def counts(self) -> dict[str, ExpiryCounts]:
        """Per policy: certificates in the renewal window and expired (every loaded policy, zeros too)."""
        now = self.clock.now()
        found = self.store.expiry.counts(now, renewal_horizons(self.policies, now))
        return {**{p.name: ExpiryCounts(0, 0) for p in self.policies}, **found}
