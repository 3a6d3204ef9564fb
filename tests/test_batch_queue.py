"""The batch API's queue (ra/batch_queue.py) on the database under test, with real flock slots and
leases: the node limit holds, a failed run goes back to open, a batch whose runner died is queued
again once its lease ran out, one whose lease runs (another node) is not.
(The whole path over TLS is in tests/integration/test_bulk_api.py.)"""
from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from device_ca.ra.batch_queue import BatchQueue
from device_ca.store import AuditEvent
from device_ca.store.batches import Batch, NewItem
from helpers import T0


@pytest.fixture
def queues():
    """BatchQueue(...) made through this; each stopped after the test (no thread left polling)."""
    made = []

    def make(*args, **kwargs):
        made.append(BatchQueue(*args, **kwargs))
        return made[-1]
    yield make
    for queue in made:
        queue.stop()


def _open(store, batch_id: str, state: str = "queued") -> Batch:
    batch = Batch(id=batch_id, policy="env-sensor", input_sha256="0" * 64, items=1, keygen=False, secret_sha256=None,
                  state=state, created_at=T0, created_by="station:test", finished_at=None)
    store.batches.open(batch, lambda: [NewItem("env-0001", 0, b"csr")],
                       AuditEvent(action="batch.opened", actor="test", at=T0, details={"batch": batch_id}))
    return batch


def _wait(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_one_batch_at_a_time_with_limit_one_and_the_next_after_it(store, tmp_path, queues):
    release, running, order = threading.Event(), [], []

    def run(batch: Batch) -> None:
        running.append(batch.id)
        order.append(batch.id)
        release.wait(10)
        store.batches.finish(batch.id, T0, AuditEvent(action="batch.finished", actor="test", at=T0))
        running.remove(batch.id)

    queue = queues(store.batches, run, tmp_path / "locks", store.leases, limit=1, poll=0.2)
    for name in ("b-1", "b-2"):
        queue.submit(_open(store, name))
    _wait(lambda: running == ["b-1"])
    time.sleep(0.5)                                              # several looks: b-2 must still wait
    assert running == ["b-1"] and store.batches.get("b-2").state == "queued"
    release.set()
    _wait(lambda: store.batches.get("b-2").state == "done")
    assert order == ["b-1", "b-2"]


def test_a_failed_run_goes_back_to_open_and_resubmitting_runs_it_again(store, tmp_path, queues):
    attempts = []

    def run(batch: Batch) -> None:
        attempts.append(batch.id)
        if len(attempts) == 1:
            raise RuntimeError("token gone")
        store.batches.finish(batch.id, T0, AuditEvent(action="batch.finished", actor="test", at=T0))

    queue = queues(store.batches, run, tmp_path / "locks", store.leases, limit=2, poll=0.2)
    queue.submit(_open(store, "b-3"))
    _wait(lambda: store.batches.get("b-3").state == "open")
    queue.submit(store.batches.get("b-3"))
    _wait(lambda: store.batches.get("b-3").state == "done")
    assert attempts == ["b-3", "b-3"]


def test_a_batch_left_running_by_a_dead_runner_is_queued_again_but_not_one_still_running(store, tmp_path, queues):
    ran = []

    def run(batch: Batch) -> None:
        ran.append(batch.id)
        store.batches.finish(batch.id, T0, AuditEvent(action="batch.finished", actor="test", at=T0))

    queue = queues(store.batches, run, tmp_path / "locks", store.leases, limit=2, poll=0.2)
    now = dt.datetime.now(dt.timezone.utc)
    _open(store, "b-4", state="running")                         # its runner died: its lease ran out
    assert store.leases.acquire("batch:b-4", "dead-node", now - dt.timedelta(minutes=5), dt.timedelta(seconds=30))
    _open(store, "b-5", state="running")                         # still run on another node: its lease runs
    assert store.leases.acquire("batch:b-5", "other-node", now, dt.timedelta(minutes=5))
    queue.kick()
    _wait(lambda: ran == ["b-4"])
    time.sleep(0.5)
    assert store.batches.get("b-5").state == "running" and ran == ["b-4"]
    assert store.leases.holder("batch:b-5", dt.datetime.now(dt.timezone.utc)) == "other-node"


def test_a_run_that_returns_with_items_left_is_stopped_not_run_again_and_again(store, tmp_path, queues):
    ran = []
    queue = queues(store.batches, lambda batch: ran.append(batch.id), tmp_path / "locks", store.leases, limit=1, poll=0.1)
    queue.submit(_open(store, "b-6"))
    _wait(lambda: store.batches.get("b-6").state == "open")
    time.sleep(0.5)                                              # several looks later: not taken again
    assert ran == ["b-6"]
