"""The queue of batches submitted on the batch API: at most ``limit`` run at once on a node,
whatever the number of worker processes; the others wait in state ``queued``.

A submitted batch is stored (items and CSRs) in the request as ``queued`` and the receiving
process's runner is woken. A runner takes a node slot (an exclusive flock on one of ``limit``
files under the node's state directory), claims the oldest queued batch in the database (queued
-> running, one claimer wins) and runs it in a thread holding the batch's lease in the database
(``batch:<id>``, store/leases.py, extended while it runs), so that one batch never runs twice at
once on any node. When a batch finishes its runner looks for the next, and every runner also looks
every ``poll`` seconds: a batch queued on one process or node is taken by whichever frees a slot.
A batch left ``running`` by a crashed worker or node has a lease that stops being extended: it is
queued again at the first look after the lease expired (``LEASE_TTL``); a batch whose run failed
goes back to ``open`` and is resumed when it is submitted again.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from typing import Callable

from device_ca.ca.clock import Clock, SystemClock
from device_ca.files import try_lock, unlock
from device_ca.store.batches import Batch, BatchRepo
from device_ca.store.leases import LeaseRepo, new_holder

log = logging.getLogger("device_ca.ra.batch_queue")

DEFAULT_LIMIT = 2
LEASE_TTL = dt.timedelta(seconds=30)       # a dead runner's batch is queued again after this


class BatchQueue:
    def __init__(self, batches: BatchRepo, run: Callable[[Batch], None], lock_dir: Path, leases: LeaseRepo,
                 limit: int = DEFAULT_LIMIT, poll: float = 30.0, clock: Clock | None = None):
        self.batches = batches
        self.leases = leases
        self.clock = clock or SystemClock()
        self._run = run
        self.lock_dir = Path(lock_dir)
        self.limit = limit
        self.poll = poll
        self._wake = threading.Event()
        self._stopped = False
        self._started = False
        self._start_lock = threading.Lock()

    def submit(self, batch: Batch) -> None:
        """A stored batch is to be run: queued again if it stopped (``open``) or its runner died,
        then a runner is woken. Nothing for a batch that is done, queued or running."""
        if batch.state in ("open", "running") and self._idle(batch.id):
            self.batches.move(batch.id, ("open", "running"), "queued")
        self.kick()

    def kick(self) -> None:
        with self._start_lock:
            if not self._started:
                threading.Thread(target=self._loop, name="device-ca-batches", daemon=True).start()
                self._started = True
        self._wake.set()

    def stop(self) -> None:
        """No more looks (a batch running now finishes); for tests and an orderly shutdown."""
        self._stopped = True
        self._wake.set()

    # -- the runner ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.poll)
            self._wake.clear()
            if self._stopped:
                return
            try:
                self._requeue_orphans()
                self._dispatch()
            except Exception as exc:  # noqa: BLE001 - the runner stays; the next look retries
                log.warning("batch queue: %s", exc)

    def _dispatch(self) -> None:
        while (slot := self._take_slot()) is not None:
            batch = self.batches.claim_queued()
            if batch is None:
                unlock(slot)
                return
            threading.Thread(target=self._run_one, args=(batch, slot), name=f"batch-{batch.id}", daemon=True).start()

    def _run_one(self, batch: Batch, slot: int) -> None:
        lease, holder = _lease(batch.id), new_holder()
        held = self.leases.acquire(lease, holder, self.clock.now(), LEASE_TTL)
        stop = threading.Event()
        try:
            if not held:                      # run by another process already (claimed twice after a requeue)
                return
            threading.Thread(target=self._extend, args=(lease, holder, stop), name=f"batch-lease-{batch.id}",
                             daemon=True).start()
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - the batch stays; resubmitting resumes it
                log.error("batch %s stopped: %s", batch.id, exc)
                self.batches.move(batch.id, ("running",), "open")
            else:
                if self.batches.move(batch.id, ("running",), "open"):    # returned with items left to do
                    log.warning("batch %s stopped with items left; resubmitting resumes it", batch.id)
        finally:
            stop.set()
            if held:
                self.leases.release(lease, holder, self.clock.now())
            unlock(slot)
            self.kick()                       # the slot is free: the next queued batch

    def _extend(self, lease: str, holder: str, stop: threading.Event) -> None:
        while not stop.wait(LEASE_TTL.total_seconds() / 3):
            try:
                if not self.leases.acquire(lease, holder, self.clock.now(), LEASE_TTL):
                    log.error("batch lease %s was taken over while its batch runs", lease)
            except Exception as exc:  # noqa: BLE001 - the next try may reach the database again
                log.warning("batch lease %s: %s", lease, exc)

    def _requeue_orphans(self) -> None:
        for batch_id in self.batches.in_state("running"):
            if self._idle(batch_id) and self.batches.move(batch_id, ("running",), "queued"):
                log.warning("batch %s: its runner is gone; queued again", batch_id)

    # -- slots and leases ------------------------------------------------------------------------

    def _take_slot(self) -> int | None:
        for i in range(self.limit):
            fd = try_lock(self.lock_dir / f"slot-{i}.lock")
            if fd is not None:
                return fd
        return None

    def _idle(self, batch_id: str) -> bool:
        """No process of any node runs the batch now."""
        return self.leases.holder(_lease(batch_id), self.clock.now()) is None


def _lease(batch_id: str) -> str:
    return f"batch:{batch_id}"
