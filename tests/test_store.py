"""Storage: the Alembic schema matches the tables, and the audit chain catches tampering."""
from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from device_ca.store import AuditEvent
from device_ca.store import audit as audit_chain
from helpers import T0


def test_migrations_match_the_tables(store):
    with store.db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == []


def _events(store, n=5):
    for i in range(n):
        with store.db.write() as s:
            audit_chain.append(s, AuditEvent(action="test.event", actor="test", at=T0 + dt.timedelta(seconds=i),
                                             serial=f"{i:02x}", details={"i": i}))


def _sql(store, statement: str) -> None:
    with store.db.engine.begin() as c:
        c.exec_driver_sql(statement)


def test_intact_chain_verifies(store):
    _events(store)
    report, head = store.verify_audit()
    assert report.ok and report.events == 5 and len(head) == 64


@pytest.mark.parametrize("tamper, expected", [
    ("UPDATE audit_events SET details = '{\"i\":99}' WHERE seq = 3", "event 3: content does not match its hash"),
    ("DELETE FROM audit_events WHERE seq = 3", "sequence gap: expected event 3, found 4"),
    ("DELETE FROM audit_events WHERE seq = 5", "chain ends at event 4 but the head records event 5"),
    # events 2 and 4 swap places (through a free sequence number)
    ("UPDATE audit_events SET seq = 100 WHERE seq = 2; UPDATE audit_events SET seq = 2 WHERE seq = 4; "
     "UPDATE audit_events SET seq = 4 WHERE seq = 100", "link to the previous event is broken"),
])
def test_tampering_is_detected(store, tamper, expected):
    _events(store)
    for statement in tamper.split("; "):
        _sql(store, statement)
    report, _ = store.verify_audit()
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems
