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
    seq, _, digest = head.partition(":")
    assert report.ok and report.events == 5 and seq == "5" and len(digest) == 64


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


# --- Direct: prebuilt statements on the DBAPI connection -----------------------------------------

def _reservation_row(serial: str, at: dt.datetime) -> dict:
    return {"serial": serial, "issuer": "issuing", "device_id": "lock-1", "policy": "door-lock",
            "tbs_sha256": "0" * 64, "state": "reserved", "reserved_at": at}


def test_direct_rows_read_back_through_sqlalchemy_as_core_wrote_them(store):
    import sqlalchemy as sa

    from device_ca.store.issuance_sql import INSERT_RESERVATION, RESERVATIONS

    at = dt.datetime(2026, 11, 29, 1, 2, 3, 456789, tzinfo=dt.timezone.utc)
    with store.db.direct() as c:
        c.execute(INSERT_RESERVATION, _reservation_row("0a", at))
    with store.db.transaction() as c:
        c.execute(INSERT_RESERVATION, _reservation_row("0b", at))
    with store.db.reading() as c:
        rows = {r.serial: r for r in c.execute(sa.select(RESERVATIONS))}
    assert rows["0a"]._asdict() | {"serial": "0b"} == rows["0b"]._asdict()
    assert store.reservation("0a").reserved_at == at


def test_direct_select_converts_columns_and_names_them(store):
    from device_ca.store.enrollment import _FIND_TOKEN

    expires = T0 + dt.timedelta(hours=1)
    store.enrollment.add_token("t1", "ab" * 32, "br-1", "badge-reader", T0, expires, "test")
    with store.db.direct_read() as c:
        row = c.execute(_FIND_TOKEN, {"digest": "ab" * 32}).first()
        missing = c.execute(_FIND_TOKEN, {"digest": "cd" * 32}).first()
    assert row.device_id == "br-1" and row.expires_at.replace(tzinfo=dt.timezone.utc) == expires
    assert isinstance(row.created_at, dt.datetime) and missing is None


def test_direct_integrity_error_is_sqlalchemys_and_rolls_back_the_transaction(store):
    from sqlalchemy.exc import IntegrityError

    from device_ca.store.issuance_sql import INSERT_RESERVATION

    with pytest.raises(IntegrityError):
        with store.db.direct() as c:
            c.execute(INSERT_RESERVATION, _reservation_row("0c", T0))
            c.execute(INSERT_RESERVATION, _reservation_row("0c", T0))
    assert store.reservation("0c") is None


def test_direct_executemany_and_rowcount(store):
    from device_ca.store.issuance_sql import INSERT_RESERVATION, MARK_ISSUED

    with store.db.direct() as c:
        c.execute(INSERT_RESERVATION, [_reservation_row(f"1{i}", T0) for i in range(3)])
        assert c.execute(MARK_ISSUED, {"reserved_serial": "11"}).rowcount == 1
        assert c.execute(MARK_ISSUED, {"reserved_serial": "11"}).rowcount == 0      # no longer reserved
    assert [store.reservation(f"1{i}").state for i in range(3)] == ["reserved", "issued", "reserved"]


def test_direct_refuses_a_database_that_is_down(tmp_path):
    from device_ca.errors import DeviceCAError, Kind
    from device_ca.store.db import Database

    db = Database(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")          # directory does not exist
    with pytest.raises(DeviceCAError) as caught:
        with db.direct_read():
            pass
    assert caught.value.kind is Kind.DB_UNAVAILABLE
