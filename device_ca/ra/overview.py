"""What the console's overview shows, read in one go: certificates by policy and state, the expiry
histogram of the next 90 days (10-day bars), revocations per day over the last 30 days (today
included), enrollments awaiting approval and the Keycloak outbox backlog."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from device_ca.store.fleet import STATES, Buckets, day_edges, midnight
from device_ca.store.outbox import OutboxBacklog

EXPIRY_DAYS = 90
EXPIRY_BAR_DAYS = 10
REVOCATION_DAYS = 30


@dataclass(frozen=True)
class Overview:
    at: dt.datetime
    counts: dict[str, dict[str, int]]          # policy -> state -> certificates
    expiring: Buckets                          # good, unrenewed, by notAfter, from ``at``
    revocations: Buckets                       # per UTC day, the last one today's
    pending_requests: int
    outbox: OutboxBacklog

    @property
    def policies(self) -> list[str]:
        return sorted(self.counts)

    def totals(self) -> dict[str, int]:
        """state -> certificates over every policy, every state present (0 if none)."""
        return {state: sum(by_state.get(state, 0) for by_state in self.counts.values()) for state in STATES}


def read_overview(store, clock) -> Overview:
    now = clock.now()
    first_day = midnight(now) - dt.timedelta(days=REVOCATION_DAYS - 1)
    return Overview(at=now, counts=store.fleet.counts(now),
                    expiring=store.fleet.expiring(day_edges(now, EXPIRY_DAYS, EXPIRY_BAR_DAYS)),
                    revocations=store.fleet.revocations(day_edges(first_day, REVOCATION_DAYS)),
                    pending_requests=store.fleet.pending_requests(), outbox=store.queue.backlog())
