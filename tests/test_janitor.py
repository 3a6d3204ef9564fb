"""The periodic jobs shared by several nodes (ra/janitor.py) on the database under test, with
software keys: one lease holder does the CA-wide jobs, the others only follow the newest CRL into
their own files; a dead holder's jobs move to another node after the lease period; nodes that
start together make one responder and one CRL. (Three real nodes: tests/integration/test_nodes.py.)"""
from __future__ import annotations

import datetime as dt
import threading

import pytest

from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.janitor import LEASE_TTL, Janitor
from device_ca.ra.publication import StatusPublisher, _crl_number
from test_publication import setup  # noqa: F401 - the fixture


def _node(service: StatusPublisher, ra, store, tmp_path, name: str) -> Janitor:
    publisher = StatusPublisher(store, service._issuer, service.token, service.clock, tmp_path / name / "issuing.crl")
    return Janitor(publisher, ra, store.leases, holder=name)


def _crl_numbers(store) -> list[int]:
    with store.db.reading() as c:
        return [n for n, in c.exec_driver_sql("SELECT number FROM crls ORDER BY number")]


def _responders(store) -> int:
    with store.db.reading() as c:
        return c.exec_driver_sql("SELECT count(*) FROM ocsp_responders").scalar()


def test_one_node_does_the_ca_wide_jobs_and_every_node_writes_the_newest_crl(setup, store, tmp_path):
    ra, service, _, record, *_ = setup
    a, b = (_node(service, ra, store, tmp_path, name) for name in ("node-a", "node-b"))
    assert a.run_once() is True                       # first: a takes the lease, publishes the first CRL
    assert b.run_once() is False
    assert len(_crl_numbers(store)) == 1
    ra.revoke(record.serial, "keyCompromise", actor="test")
    for _ in range(3):                                # rounds on both nodes: one new CRL, by a
        assert (b.run_once(), a.run_once()) == (False, True)
    numbers = _crl_numbers(store)
    assert len(numbers) == 2 and numbers == sorted(numbers)
    b.run_once()
    for node in (a, b):
        assert _crl_number(node.publisher.crl_path) == numbers[-1]
    assert store.status.status_and_presigned(record.serial)[1].status == "revoked"     # a pre-signed it
    assert [h.holder for h in store.leases.history("janitor:issuing")] == ["node-a"]


def test_a_dead_holders_jobs_move_to_another_node_after_the_lease_period(setup, store, tmp_path, clock):
    ra, service, _, record, *_ = setup
    a, b = (_node(service, ra, store, tmp_path, name) for name in ("node-a", "node-b"))
    assert a.run_once() and not b.run_once()
    ra.revoke(record.serial, "keyCompromise", actor="test")           # a dies before its next round
    clock.advance(LEASE_TTL - dt.timedelta(seconds=1))
    assert b.run_once() is False and len(_crl_numbers(store)) == 1      # a's lease still runs
    clock.advance(dt.timedelta(seconds=1))
    assert b.run_once() is True and len(_crl_numbers(store)) == 2       # b took over and published
    assert a.run_once() is False                                          # a came back: b keeps it
    history = store.leases.history("janitor:issuing")
    assert [(h.holder, h.previous_holder) for h in history] == [("node-a", None), ("node-b", "node-a")]
    assert history[1].acquired_at >= history[1].previous_expires_at


def test_nodes_preparing_together_make_one_responder_and_one_crl(setup, store, tmp_path):
    ra, service, *_ = setup
    responders = _responders(store)
    nodes = [_node(service, ra, store, tmp_path, f"node-{i}") for i in range(4)]
    start = threading.Barrier(len(nodes))
    errors = []

    def prepare(node):
        start.wait()
        try:
            node.prepare(wait=30)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert _responders(store) == responders
    numbers = _crl_numbers(store)
    assert len(numbers) == 1
    for node in nodes:
        assert _crl_number(node.publisher.crl_path) == numbers[0]
    assert store.leases.held(service.clock.now()) == []                # released after preparing


def test_a_node_that_cannot_get_the_lease_for_a_ca_not_ready_says_so(setup, store, tmp_path, clock):
    ra, service, *_ = setup
    node = _node(service, ra, store, tmp_path, "node-late")
    assert store.leases.acquire("janitor:issuing", "a-busy-node", clock.now(), dt.timedelta(hours=1))
    with pytest.raises(DeviceCAError) as caught:
        node.prepare(wait=1)                          # no CRL yet, and the holder never makes one
    assert caught.value.kind is Kind.CONFLICT and "janitor:issuing" in caught.value.detail
    assert _crl_numbers(store) == [] and not node.publisher.crl_path.exists()


def test_a_responder_key_left_without_its_certificate_is_reported_at_start(setup, store, tmp_path, caplog):
    ra, service, *_ = setup
    service.token.generate("device-ca-ocsp-20261205030000-0123456789ab", "EC")     # the row was never written
    node = _node(service, ra, store, tmp_path, "node-a")
    assert node.publisher.orphan_responder_keys() == ["device-ca-ocsp-20261205030000-0123456789ab"]
    with caplog.at_level("WARNING", logger="device_ca.ra.janitor"):
        node.prepare(wait=5)
    assert "device-ca-ocsp-20261205030000-0123456789ab" in caplog.text
    assert node.publisher.responder() is not None                       # serving with the recorded responder
