"""Leases in the database under test (store/leases.py): one holder at a time, taken over only
after expiry, every change of holder in the history; and a race of processes, each with its own
connections, where exactly one wins."""
from __future__ import annotations

import datetime as dt
import multiprocessing

from device_ca.store import Store
from helpers import T0

TTL = dt.timedelta(seconds=60)


def test_one_holder_at_a_time_until_it_expires_and_each_handover_recorded(store):
    at = lambda seconds: T0 + dt.timedelta(seconds=seconds)       # noqa: E731
    assert store.leases.acquire("job", "a", at(0), TTL)
    assert not store.leases.acquire("job", "b", at(30), TTL)
    assert store.leases.acquire("job", "a", at(30), TTL)                    # extended to 90
    assert not store.leases.acquire("job", "b", at(89), TTL)
    assert store.leases.holder("job", at(89)) == "a"
    assert store.leases.acquire("job", "b", at(90), TTL)                    # expired: taken
    assert store.leases.holder("job", at(91)) == "b"
    store.leases.release("job", "a", at(91))                                # not a's any more: nothing
    assert not store.leases.acquire("job", "a", at(92), TTL)
    store.leases.release("job", "b", at(95))
    assert store.leases.holder("job", at(95)) is None and store.leases.held(at(95)) == []
    assert store.leases.acquire("job", "a", at(95), TTL)                    # released: free at once
    assert [lease.holder for lease in store.leases.held(at(96))] == ["a"]

    history = store.leases.history("job")
    assert [(h.holder, h.acquired_at, h.previous_holder, h.previous_expires_at) for h in history] == [
        ("a", at(0), None, None), ("b", at(90), "a", at(90)), ("a", at(95), "b", at(95))]


def test_a_holder_that_let_its_lease_expire_takes_it_again_as_a_new_holding(store):
    at = lambda seconds: T0 + dt.timedelta(seconds=seconds)       # noqa: E731
    assert store.leases.acquire("job", "a", at(0), TTL)
    assert store.leases.acquire("job", "a", at(100), TTL)                   # expired at 60, nobody took it
    assert [(h.holder, h.previous_holder, h.previous_expires_at) for h in store.leases.history("job")] == [
        ("a", None, None), ("a", "a", at(60))]


def _race(url: str, holder: str, start, results) -> None:
    store = Store(url, migrate_schema=False)
    start.wait()
    results.put((holder, store.leases.acquire("raced", holder, T0, TTL)))
    store.db.dispose()


def test_processes_racing_for_a_fresh_lease_give_exactly_one_holder(database_url):
    Store(database_url).db.dispose()                                        # the schema, once
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(6), context.Queue()
    racers = [context.Process(target=_race, args=(database_url, f"node-{i}", start, results)) for i in range(6)]
    for p in racers:
        p.start()
    for p in racers:
        p.join(60)
    won = [holder for holder, ok in (results.get(timeout=5) for _ in racers) if ok]
    store = Store(database_url, migrate_schema=False)
    try:
        assert len(won) == 1
        assert store.leases.holder("raced", T0) == won[0]
        assert [h.holder for h in store.leases.history("raced")] == won
    finally:
        store.db.dispose()
