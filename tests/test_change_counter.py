"""The SQLite change counter the OCSP cache trusts: every write through Database moves it, a write
under way (or one whose writer died) shows as odd, and the status repository never calls two
reads equal across a write."""
from __future__ import annotations

import multiprocessing
import os

import sqlalchemy as sa

from device_ca.store import Store
from device_ca.store.db import ChangeCounter


def _sqlite_store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'ca.db'}")


def test_every_write_moves_the_counter_and_is_odd_while_under_way(tmp_path):
    store = _sqlite_store(tmp_path)
    counter = ChangeCounter(store.db.url)
    before = counter.value()
    assert before % 2 == 0
    marker = store.status.change_marker()
    assert store.status.change_marker() == marker
    with store.db.transaction() as c:
        during = counter.value()
        assert during % 2 == 1 and during > before
        assert store.status.change_marker() != store.status.change_marker()
        c.execute(sa.text("SELECT 1"))
    after = counter.value()
    assert after % 2 == 0 and after > during
    assert store.status.change_marker() != marker
    with store.db.write():                            # the ORM path moves it too
        pass
    assert counter.value() > after


def _die_inside_a_transaction(url: str) -> None:
    store = Store(url)
    with store.db.transaction():
        os._exit(9)                                   # as kill -9 would: no COMMIT, no unlock step


def test_a_writer_dying_mid_transaction_leaves_the_cache_disabled_until_the_next_write(tmp_path):
    store = _sqlite_store(tmp_path)
    child = multiprocessing.get_context("fork").Process(target=_die_inside_a_transaction, args=(store.db.url,))
    child.start()
    child.join(30)
    assert child.exitcode == 9
    counter = ChangeCounter(store.db.url)
    assert counter.value() % 2 == 1
    assert store.status.change_marker() != store.status.change_marker()
    with store.db.transaction():
        pass
    assert counter.value() % 2 == 0
    assert store.status.change_marker() == store.status.change_marker()


def test_markers_on_the_database_under_test(database_url):
    store = Store(database_url)
    if database_url.startswith("sqlite"):
        assert store.status.change_marker() == store.status.change_marker()
    else:
        assert store.status.change_marker() != store.status.change_marker()
