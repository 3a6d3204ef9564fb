"""The periodic jobs of a running CA: publish a CRL when a revocation asks for one or half its
validity has passed, and otherwise bring this node's CRL file up to the newest CRL in the
database (signed by another node); pre-sign OCSP answers for new, revoked and ageing certificates; revoke
superseded certificates whose rotation grace is over; rotate the OCSP responder certificate; sign
an audit checkpoint every 30 s in which events were added and after every CRL.

One process at a time runs them (an exclusive flock on ``run/janitor.lock`` under the state
directory; when that process dies another takes over).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from device_ca.files import try_lock
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.checkpoints import AuditCheckpoints
from device_ca.ra.publication import StatusPublisher

log = logging.getLogger("device_ca.ra.janitor")

JANITOR_SECONDS = 5          # CRL after a revocation within seconds (bursts coalesce into one CRL)
ROTATION_EVERY = 6           # superseded revocations and responder rotation every 30 s


class Janitor:
    def __init__(self, publisher: StatusPublisher, ra: RegistrationAuthority, lock_path: Path,
                 checkpoints: AuditCheckpoints | None = None):
        self.publisher = publisher
        self.ra = ra
        self.checkpoints = checkpoints
        self.lock_path = lock_path
        self.rounds = 0
        self._lock: int | None = None

    def run_once(self) -> bool:
        """One round, if this process holds the lock (taken on the first round that can); False if not."""
        if self._lock is None:
            self._lock = try_lock(self.lock_path)
            if self._lock is None:
                return False
        self.rounds += 1
        published = False
        if self.publisher.crl_due():
            self.publisher.generate_crl()
            published = True
        else:
            self.publisher.sync_crl_file()        # a CRL another node signed
        signed = self.publisher.presign()
        if signed:
            log.info("pre-signed %d OCSP answers", signed)
        if self.rounds % ROTATION_EVERY == 0:
            done = self.ra.revoke_superseded()
            if done:
                log.info("revoked %d superseded certificates", len(done))
            self.publisher.ensure_responder()
        if self.checkpoints is not None and (published or self.rounds % ROTATION_EVERY == 0):
            self.checkpoints.sign(force=published)
        return True

    def start(self, interval: float = JANITOR_SECONDS) -> threading.Thread:
        """A daemon thread running a round every ``interval`` seconds; errors are logged and retried."""
        def loop() -> None:
            while True:
                time.sleep(interval)
                try:
                    self.run_once()
                except Exception as exc:  # noqa: BLE001 - keep the janitor alive; the next round retries
                    log.warning("janitor: %s", exc)

        thread = threading.Thread(target=loop, name="device-ca-janitor", daemon=True)
        thread.start()
        return thread
