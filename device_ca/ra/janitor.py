"""The periodic jobs of a running CA: publish a CRL when a revocation asks for one or half its
validity has passed; pre-sign OCSP answers for new, revoked and ageing certificates; revoke
superseded certificates whose rotation grace is over; handle the certificates whose notAfter has
passed (audit, Keycloak disable: ra/expiry.py) every round, so within seconds of expiry; rotate the
OCSP responder certificate; sign an audit checkpoint every 30 s in which events were added and after
every CRL; forget idle rate-limit buckets; every 30 s, sign the root CRL when it is due (half its
year passed, or an issuing CA revoked) and the root key is on the token (ra/rootca.py; an offline
root is only warned about); after a rollover (ra/rollover.py), the CRL, pre-signing and responder
jobs run for every issuing CA generation that still signs status (a new generation gets its CRL and
responder in the first round that sees it; the serving workers start issuing with it only then),
and an old generation whose certificates have all expired is retired.

These CA-wide jobs run in one process of one node at a time: the holder of the lease
``janitor:issuing`` in the database (store/leases.py), extended before each job. When its node dies
another process, on any node, takes the lease over within ``LEASE_TTL``. Every process of every
node also brings its node's CRL file up to the newest CRL in the database each round, wherever that
CRL was signed. ``prepare`` is the same work done once before a node starts serving, under the
same lease, so that nodes started together make one responder and one CRL, not one each.

Should a holder stall past its lease (a pause longer than ``LEASE_TTL``), the jobs stay safe to
overlap: CRL numbers are reserved atomically, pre-signed answers and revocations are idempotent,
responder keys have unique labels, and each expiry is handled by one conditional update.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Callable

from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.checkpoints import AuditCheckpoints
from device_ca.ra.expiry import ExpiryJob
from device_ca.ra.publication import StatusPublisher
from device_ca.ra.rootca import RootAuthority
from device_ca.store.leases import LeaseRepo, new_holder

log = logging.getLogger("device_ca.ra.janitor")

JANITOR_SECONDS = 5          # CRL after a revocation within seconds (bursts coalesce into one CRL)
ROTATION_EVERY = 6           # superseded revocations and responder rotation every 30 s
LEASE_TTL = dt.timedelta(seconds=20)      # a dead holder's jobs resume elsewhere within this
FAILING_ROUNDS = 3           # rounds failing in a row before the janitor logs an error (not a warning)
PREPARE_WAIT = 60.0          # seconds a starting node waits for the lease (or for another to finish)


class Janitor:
    def __init__(self, publisher: StatusPublisher, ra: RegistrationAuthority, leases: LeaseRepo,
                 checkpoints: AuditCheckpoints | None = None, forget_idle=None, holder: str | None = None,
                 root: RootAuthority | None = None, expiry: ExpiryJob | None = None,
                 publishers: Callable[[], list[StatusPublisher]] | None = None,
                 retire: Callable[[], list[str]] | None = None):
        """``publishers``: every issuing CA's publisher that still signs status, read each round
        (default: ``publisher`` alone); ``retire``: retires old generations, returns their names."""
        self.publisher = publisher
        self.publishers = publishers or (lambda: [publisher])
        self.retire = retire
        self.root = root
        self.ra = ra
        self.leases = leases
        self.checkpoints = checkpoints
        self.expiry = expiry
        self.forget_idle = forget_idle        # () -> None: drops idle shared rate-limit buckets
        self.lease = "janitor:issuing"            # one lease for every generation's jobs
        self.holder = holder or new_holder()
        self.rounds = 0

    def _hold(self) -> bool:
        """Take or extend the lease; False if another holds it."""
        return self.leases.acquire(self.lease, self.holder, self.publisher.clock.now(), LEASE_TTL)

    def run_once(self) -> bool:
        """One round: the CA-wide jobs if this process holds the lease (False if not); the node's
        CRL files in every round."""
        publishers = self.publishers()
        if not self._hold():
            for publisher in publishers:          # a CRL the holder signed, on another node perhaps
                publisher.sync_crl_file()
            return False
        self.rounds += 1
        if self.expiry is not None:              # first: it needs no token, so a token outage cannot delay it
            lapsed = self.expiry.run(still_holding=self._hold)
            if lapsed:
                log.info("handled the expiry of %d certificates", len(lapsed))
        published = False
        for publisher in publishers:
            if publisher.crl_due():
                publisher.generate_crl()
                published = True
            else:
                publisher.sync_crl_file()
        if not self._hold():
            return True
        for publisher in publishers:
            if not publisher.has_responder():     # a generation a rollover made since the last round
                publisher.ensure_responder()
            signed = publisher.presign()
            if signed:
                log.info("pre-signed %d OCSP answers (%s)", signed, publisher.ca)
        if self.rounds % ROTATION_EVERY == 0 and self._hold():
            done = self.ra.revoke_superseded()
            if done:
                log.info("revoked %d superseded certificates", len(done))
            for publisher in publishers:
                publisher.ensure_responder()
            if self.retire is not None:
                self.retire()
            if self.forget_idle is not None:
                self.forget_idle()
            if self.root is not None and self._hold():
                published = self._root_crl() or published
        if self.checkpoints is not None and (published or self.rounds % ROTATION_EVERY == 0) and self._hold():
            self.checkpoints.sign(force=published)
        return True

    def prepare(self, wait: float = PREPARE_WAIT) -> None:
        """Before a node serves: an OCSP responder, its pre-signed answers and a CRL for every issuing
        CA that signs status, made under the lease by whichever node comes first; the others find
        them made (or wait for the holder to make them) and only write the newest CRLs to their files."""
        deadline = time.monotonic() + wait
        publishers = self.publishers()
        while not all(p.ready() for p in publishers):
            if self._hold():
                try:
                    for publisher in publishers:
                        publisher.ensure_responder()
                        while publisher.presign():
                            self._hold()
                        if publisher.crl_due():
                            publisher.generate_crl()
                finally:
                    self.leases.release(self.lease, self.holder, self.publisher.clock.now())
                break
            if time.monotonic() > deadline:
                raise DeviceCAError(Kind.CONFLICT, f"the CA's OCSP responder or CRL is not ready and another "
                                    f"process has held the lease {self.lease!r} for {wait:.0f} s")
            time.sleep(0.5)
        for publisher in publishers:
            publisher.sync_crl_file()
        if self.root is not None and self.root.crl_due() and self._hold():
            try:
                self._root_crl()
            finally:
                self.leases.release(self.lease, self.holder, self.publisher.clock.now())
        for label in self.publisher.orphan_responder_keys():
            log.warning("OCSP responder key %s is on the token without a responder certificate (a start "
                        "interrupted while making it); it is never used and may be deleted", label)

    def _root_crl(self) -> bool:
        """The root CRL if due; True if one was signed. A failure is logged, not raised: the
        issuing CA's jobs go on."""
        try:
            return self.root.refresh() is not None
        except DeviceCAError as exc:
            log.warning("root CRL: %s", exc.detail)
            return False

    def start(self, interval: float = JANITOR_SECONDS) -> threading.Thread:
        """A daemon thread running a round every ``interval`` seconds; errors are logged and retried."""
        def loop() -> None:
            failing = 0
            while True:
                time.sleep(interval)
                try:
                    self.run_once()
                    failing = 0
                except Exception as exc:  # noqa: BLE001 - keep the janitor alive; the next round retries
                    failing += 1
                    # one failed round is a warning; rounds failing in a row stop CRLs and pre-signed
                    # answers, which an operator must see at the default log level
                    (log.error if failing >= FAILING_ROUNDS else log.warning)(
                        "janitor: %s (%d rounds in a row)", exc, failing)

        thread = threading.Thread(target=loop, name="device-ca-janitor", daemon=True)
        thread.start()
        return thread
