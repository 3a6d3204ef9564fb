"""The outbox drainer: Keycloak changes written in the issuing or revoking transaction, applied in
order once Keycloak answers (the transactional outbox pattern).

Issuance and revocation never wait for Keycloak: they only add a row. The drainer takes rows in id
order and reconciles the row's device in the row's realm with the store. While Keycloak is
unreachable or answers 5xx, the drain stops at the first row (nothing overtakes it) and waits with
exponential backoff; a row that Keycloak refuses (4xx) keeps its device's later rows waiting behind
it and is retried with backoff while other devices go on. Each try records the attempt count and
the last error on the row. A lease in the database lets one drainer at a time work, across the
server's workers and nodes (store/leases.py).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Callable

from device_ca.ca.clock import Clock
from device_ca.keycloak.admin import KeycloakError
from device_ca.keycloak.sync import TOPIC_PREFIX, KeycloakSync
from device_ca.runtime import start_rounds
from device_ca.store.leases import LeaseRepo, new_holder
from device_ca.store.outbox import OutboxRepo
from device_ca.store.state import StateRepo

log = logging.getLogger("device_ca.keycloak")

LEASE = "keycloak-outbox"
LEASE_TTL = dt.timedelta(seconds=60)
BACKOFF_MAX = 30.0
BATCH = 200


def backoff(attempts: int, cap: float = BACKOFF_MAX) -> dt.timedelta:
    """1 s, 2 s, 4 s, ... up to ``cap`` after the ``attempts``-th failure in a row."""
    return dt.timedelta(seconds=min(cap, 2.0 ** max(0, attempts - 1)))


@dataclass
class DrainReport:
    applied: int = 0
    failed: int = 0
    waiting: bool = False          # Keycloak unavailable: the drain stopped and waits
    leased: bool = True            # False: another drainer holds the lease
    last_error: str | None = None


class OutboxDrainer:
    def __init__(self, sync: KeycloakSync, queue: OutboxRepo, leases: LeaseRepo, clock: Clock,
                 holder: str | None = None, state: StateRepo | None = None):
        self.sync = sync
        self.queue = queue
        self.leases = leases
        self.state = state                   # where the last failure is noted, with its time (keycloak status)
        self.clock = clock
        self.holder = holder or new_holder()
        self._paused_until: dt.datetime | None = None
        self._unavailable_rounds = 0
        self._lock = threading.Lock()

    def drain(self, limit: int | None = None) -> DrainReport:
        """Apply what is due now; returns what happened. Never raises for Keycloak's failures."""
        with self._lock:
            report = DrainReport()
            now = self.clock.now()
            if self._paused_until is not None and now < self._paused_until:
                report.waiting = True
                return report
            if not self.leases.acquire(LEASE, self.holder, now, LEASE_TTL):
                report.leased = False
                return report
            blocked: set[str] = set()
            last_id = 0
            while limit is None or report.applied + report.failed < limit:
                entries = self.queue.pending(TOPIC_PREFIX, limit=BATCH, after_id=last_id)
                if not entries:
                    break
                for entry in entries:
                    last_id = entry.id
                    if entry.device_id in blocked:
                        continue
                    now = self.clock.now()
                    if entry.next_attempt_at is not None and entry.next_attempt_at > now:
                        blocked.add(entry.device_id)
                        continue
                    if not self._apply(entry, report, now):
                        if report.waiting:
                            return report
                        blocked.add(entry.device_id)
                    if limit is not None and report.applied + report.failed >= limit:
                        break
                self.leases.acquire(LEASE, self.holder, self.clock.now(), LEASE_TTL)
            self._unavailable_rounds = 0
            self._paused_until = None
            return report

    def _apply(self, entry, report: DrainReport, now: dt.datetime) -> bool:
        realm = entry.payload.get("realm")
        try:
            if not realm:
                raise KeycloakError(f"outbox row {entry.id} names no realm")
            change = self.sync.reconcile_device(realm, entry.device_id)
        except KeycloakError as exc:
            error = str(exc)
            report.failed += 1
            report.last_error = error
            # Unavailable: the whole drain pauses (nothing overtakes this row); refused: this row waits.
            retry = None if exc.unavailable else now + backoff(entry.attempts + 1, 300.0)
            self.queue.failed(entry.id, error, retry)
            self._note(entry, error, now)
            if exc.unavailable:
                self._unavailable_rounds += 1
                self._paused_until = now + backoff(self._unavailable_rounds)
                report.waiting = True
                log.warning("Keycloak unavailable, %s pending change(s) wait: %s", entry.topic, error)
            else:
                log.error("Keycloak refused %s for %s: %s", entry.topic, entry.device_id, error)
            return False
        except Exception as exc:  # noqa: BLE001 - a bug or a database outage must not kill the drainer
            error = f"{type(exc).__name__}: {exc}"[:500]
            report.failed += 1
            report.last_error = error
            self.queue.failed(entry.id, error, now + backoff(entry.attempts + 1))
            self._note(entry, error, now)
            log.error("outbox row %s for %s failed: %s", entry.id, entry.device_id, error)
            return False
        self.queue.applied(entry.id, self.clock.now(), change.outcome)
        report.applied += 1
        log.info("keycloak: %s (outbox %s)", change.describe(), entry.id)
        return True

    def _note(self, entry, error: str, now: dt.datetime) -> None:
        if self.state is None:
            return
        try:
            self.state.record("keycloak.drain", {"error": error, "outbox": entry.id, "device_id": entry.device_id}, now)
        except Exception:  # noqa: BLE001 - the note is for the operator; the row already holds the error
            log.warning("could not note the drain's failure", exc_info=True)

    def release(self) -> None:
        self.leases.release(LEASE, self.holder, self.clock.now())


def start_drainer(queue: OutboxRepo, drainer: Callable[[], OutboxDrainer],
                  interval: float = 1.0) -> threading.Thread:
    """A daemon thread that drains the Keycloak outbox every ``interval`` seconds (``device-ca serve``);
    ``drainer`` is built on the first round that finds work."""
    return start_rounds("keycloak drainer", lambda: queue.next_due(TOPIC_PREFIX) is not None, drainer,
                        lambda current: current.drain(), interval, BACKOFF_MAX, log)
