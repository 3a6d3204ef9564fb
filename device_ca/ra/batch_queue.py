"""The queue of batches submitted on the batch API: at most ``limit`` run at once on a node,
whatever the number of worker processes; the others wait in state ``queued``.

A submitted batch is stored (items and CSRs) in the request as ``queued`` and the receiving
process's runner is woken. A runner takes a node slot (an exclusive flock on one of ``limit``
files under the node's state directory), claims the oldest queued batch in the database (queued
-> running, one claimer wins) and runs it in a thread holding the batch's own lock, so that one
batch never runs twice at once. When a batch finishes its runner looks for the next, and every
runner also looks every ``poll`` seconds: a batch queued on one process is taken by whichever
frees a slot. Locks die with their process: a batch left ``running`` by a crashed worker has a free
lock and is queued again at the next look; a batch whose run failed goes back to ``open`` and is
resumed when it is submitted again.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from device_ca.files import try_lock, unlock
from device_ca.store.batches import Batch, BatchRepo

log = logging.getLogger("device_ca.ra.batch_queue")

DEFAULT_LIMIT = 2


class BatchQueue:
    def __init__(self, batches: BatchRepo, run: Callable[[Batch], None], lock_dir: Path,
                 limit: int = DEFAULT_LIMIT, poll: float = 30.0):
        self.batches = batches
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
        held = try_lock(self._batch_lock(batch.id))
        try:
            if held is None:                  # run by another process already (claimed twice after a requeue)
                return
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - the batch stays; resubmitting resumes it
                log.error("batch %s stopped: %s", batch.id, exc)
                self.batches.move(batch.id, ("running",), "open")
            else:
                if self.batches.move(batch.id, ("running",), "open"):    # returned with items left to do
                    log.warning("batch %s stopped with items left; resubmitting resumes it", batch.id)
        finally:
            if held is not None:
                if (self.batches.get(batch.id) or batch).state == "done":
                    self._batch_lock(batch.id).unlink(missing_ok=True)
                unlock(held)
            unlock(slot)
            self.kick()                       # the slot is free: the next queued batch

    def _requeue_orphans(self) -> None:
        for batch_id in self.batches.in_state("running"):
            if self._idle(batch_id) and self.batches.move(batch_id, ("running",), "queued"):
                log.warning("batch %s: its runner is gone; queued again", batch_id)

    # -- locks -----------------------------------------------------------------------------------

    def _take_slot(self) -> int | None:
        for i in range(self.limit):
            fd = try_lock(self.lock_dir / f"slot-{i}.lock")
            if fd is not None:
                return fd
        return None

    def _batch_lock(self, batch_id: str) -> Path:
        return self.lock_dir / f"batch-{batch_id}.lock"

    def _idle(self, batch_id: str) -> bool:
        """No process runs the batch now."""
        fd = try_lock(self._batch_lock(batch_id))
        if fd is None:
            return False
        unlock(fd)
        return True
