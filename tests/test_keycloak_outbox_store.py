"""The outbox queue and the drainer's lease on the database under test (SQLite and PostgreSQL)."""
from __future__ import annotations

import datetime as dt

from device_ca.store import OutboxMessage
from device_ca.store.repo import _enqueue
from helpers import T0



def _rows(store, n: int) -> None:
    with store.db.transaction() as c:
        _enqueue(c, [OutboxMessage(topic="keycloak.disable", device_id=f"d{i}", payload={"realm": "r", "i": i})
                     for i in range(n)] + [OutboxMessage(topic="other.topic", device_id="x", payload={})], T0)


def test_pending_rows_come_in_order_and_settle(store):
    _rows(store, 3)
    pending = store.queue.pending("keycloak.")
    assert [e.payload["i"] for e in pending] == [0, 1, 2] and store.queue.next_due("keycloak.") == T0
    store.queue.failed(pending[0].id, "Keycloak unreachable", T0 + dt.timedelta(seconds=4))
    store.queue.applied(pending[1].id, T0 + dt.timedelta(seconds=1), "disable")
    first = store.queue.pending("keycloak.")[0]
    assert (first.attempts, first.last_error, first.next_attempt_at) == (1, "Keycloak unreachable",
                                                                          T0 + dt.timedelta(seconds=4))
    assert [e.payload["i"] for e in store.queue.pending("keycloak.")] == [0, 2]
    done = store.queue.entries("keycloak.", state="done")
    assert [(e.outcome, e.applied_at) for e in done] == [("disable", T0 + dt.timedelta(seconds=1))]
    store.queue.applied_many([e.id for e in store.queue.pending("keycloak.")], T0, "sync")
    assert store.queue.pending("keycloak.") == [] and store.queue.next_due("keycloak.") is None
    assert len(store.queue.pending("other.")) == 1

