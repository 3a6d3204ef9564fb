"""Certificate expiry (ra/expiry.py, store/expiry.py) on the database under test with software keys
and a fixed clock: each lapse is handled once (audit event, Keycloak disable only for a device left
without a good certificate), by one janitor of several, also when holders overlap or one dies
mid-job; the renewal-window listing and the per-policy gauges."""
from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
import sqlalchemy as sa

from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.expiry import EXPIRED, RENEWAL_WINDOW, ExpiryJob, expiry_mark
from device_ca.ra.janitor import LEASE_TTL, Janitor
from device_ca.ra.publication import StatusPublisher
from device_ca.store import IssuanceLinks
from device_ca.web.metrics import Scrape, StateCollector
from helpers import make_csr
from test_publication import setup  # noqa: F401 - the fixture

YEAR = dt.timedelta(days=365)          # door-lock: validity 365d, renewal window 30d, Keycloak realm smart-building
SECOND = dt.timedelta(seconds=1)


def _events(store, action="certificate.expired") -> list[dict]:
    with store.db.reading() as c:
        rows = c.execute(sa.text("SELECT serial, device_id, details FROM audit_events WHERE action = :action "
                                 "ORDER BY seq"), {"action": action}).all()
    return [{"serial": s, "device_id": d, **json.loads(details)} for s, d, details in rows]


def _disables(store) -> list[tuple[str, dict]]:
    return [(m.device_id, m.payload) for m in store.outbox(state=None)
            if m.topic == "keycloak.disable"]


@pytest.fixture
def job(store, policies, clock):
    return ExpiryJob(store, policies, clock)


def _issue(ra, device_id: str, policy: str = "door-lock", ou: str = "door-lock", links=None):
    return ra.issue(policy, make_csr(device_id, ou=ou), actor="test", links=links).record


def test_a_lapse_is_audited_once_and_disables_the_devices_client(setup, store, job, clock):
    ra, _, _, record, *_ = setup                                   # lock-7, issued at T0
    clock.advance(YEAR - SECOND)
    assert job.run() == [] and _events(store) == []                # not yet
    clock.advance(SECOND)
    done = job.run()
    assert [x.serial for x in done] == [record.serial]
    [event] = _events(store)
    assert event["serial"] == record.serial and event["device_id"] == "lock-7"
    assert event["keycloak"] == ["smart-building"] and event["not_after"].startswith(record.not_after.strftime("%Y"))
    assert _disables(store) == [("lock-7", {"serial": record.serial, "policy": "door-lock", "realm": "smart-building",
                                            "reason": "expired"})]
    clock.advance(dt.timedelta(minutes=5))
    assert job.run() == []                                         # handled once
    assert len(_events(store)) == 1 and len(_disables(store)) == 1
    assert store.certificate(record.serial).status == "good"       # OCSP still says good: expiry is not revocation


def test_a_device_with_a_newer_good_certificate_keeps_its_client(setup, store, job, clock):
    ra, _, _, old, *_ = setup
    clock.advance(YEAR - dt.timedelta(days=10))                     # renews inside the window; a long grace keeps
    new = _issue(ra, "lock-7", links=IssuanceLinks(supersedes=old.serial,      # the old one good past its notAfter
                                                   supersede_revoke_after=clock.now() + dt.timedelta(days=30)))
    clock.advance(dt.timedelta(days=10))
    assert [x.serial for x in job.run()] == [old.serial]
    [event] = _events(store)
    assert event["keycloak"] == [] and event["renewed_by"] == new.serial
    assert _disables(store) == []


def test_a_revoked_certificate_expiring_is_not_handled_again(setup, store, job, clock):
    ra, _, _, record, *_ = setup
    ra.revoke(record.serial, "keyCompromise", actor="test")
    assert len(_disables(store)) == 1                              # the revocation's own disable
    clock.advance(YEAR + SECOND)
    assert job.run() == []
    assert _events(store) == [] and len(_disables(store)) == 1


def test_a_policy_without_keycloak_gets_the_audit_event_only(setup, store, job, clock):
    ra, _, _, lock, *_ = setup
    proxy = _issue(ra, "proxy-a", "front-proxy", "front-proxy")      # validity 90d, no [keycloak]
    clock.advance(dt.timedelta(days=90) + SECOND)
    assert [x.serial for x in job.run()] == [proxy.serial]
    assert _events(store)[0]["keycloak"] == [] and _disables(store) == []


def test_two_certificates_of_one_device_lapsing_together_queue_one_disable(setup, store, job, clock):
    ra, _, _, old, *_ = setup
    _issue(ra, "lock-7", links=IssuanceLinks(supersedes=old.serial, supersede_revoke_after=clock.now() + YEAR * 2))
    clock.advance(YEAR + SECOND)
    assert len(job.run()) == 2 and len(_events(store)) == 2
    assert [d for d, _ in _disables(store)] == ["lock-7"]


def _janitor(service, ra, store, tmp_path, name, job) -> Janitor:
    publisher = StatusPublisher(store, service._issuer, service.token, service.clock, tmp_path / name / "issuing.crl")
    return Janitor(publisher, ra, store.leases, holder=name, expiry=job)


def test_two_janitors_one_lease_handle_each_expiry_once_within_a_round(setup, store, job, clock, tmp_path):
    ra, service, _, record, *_ = setup
    others = [_issue(ra, f"lock-{100 + i}") for i in range(3)]
    a, b = (_janitor(service, ra, store, tmp_path, n, job) for n in ("node-a", "node-b"))
    assert a.run_once() and not b.run_once()
    clock.advance(YEAR - dt.timedelta(seconds=10))
    service.ensure_responder()                                      # (rotated in the year, as a running server does)
    assert a.run_once() and not b.run_once() and _events(store) == []
    clock.advance(dt.timedelta(seconds=15))                         # a's next round, 5 s after notAfter
    assert (b.run_once(), a.run_once(), b.run_once()) == (False, True, False)
    assert sorted(e["serial"] for e in _events(store)) == sorted([record.serial] + [r.serial for r in others])
    assert len(_disables(store)) == 4


def test_a_dead_holders_expiries_are_handled_by_the_next_one(setup, store, job, clock, tmp_path):
    ra, service, _, record, *_ = setup
    a, b = (_janitor(service, ra, store, tmp_path, n, job) for n in ("node-a", "node-b"))
    clock.advance(YEAR - dt.timedelta(seconds=10))
    service.ensure_responder()
    assert a.run_once() and not b.run_once()                        # a's last round: then it dies
    clock.advance(dt.timedelta(seconds=15))
    assert not b.run_once() and _events(store) == []                # a's lease runs 5 s more
    clock.advance(LEASE_TTL)
    assert b.run_once() and [e["serial"] for e in _events(store)] == [record.serial]
    assert job.run() == [] and len(_disables(store)) == 1


def test_expiry_is_handled_while_the_token_fails(setup, store, job, clock, tmp_path):
    ra, service, _, record, *_ = setup
    a = _janitor(service, ra, store, tmp_path, "node-a", job)
    clock.advance(YEAR + SECOND)                                    # the OCSP responder expired too

    def unavailable(*_):
        raise DeviceCAError(Kind.HSM_UNAVAILABLE, "the token is unavailable")

    service.token.generate = service.token.find = unavailable      # a new responder cannot be made
    with pytest.raises(DeviceCAError, match="token is unavailable"):   # the token work fails after the expiry job ran
        a.run_once()
    assert [e["serial"] for e in _events(store)] == [record.serial]


def test_a_holder_dying_mid_batch_leaves_nothing_half_done(setup, store, policies, clock):
    ra, _, _, record, *_ = setup
    others = [_issue(ra, f"lock-{100 + i}") for i in range(4)]
    clock.advance(YEAR + SECOND)
    calls = []

    def dies_on_the_second(lapsed, live):
        calls.append(lapsed.serial)
        if len(calls) == 2:
            raise RuntimeError("process killed")
        return []

    with pytest.raises(RuntimeError):
        store.expiry.lapse(clock.now(), 3, dies_on_the_second)
    assert _events(store) == []                                    # the batch rolled back, marks and all
    done = ExpiryJob(store, policies, clock).run(batch=2)
    assert len(done) == 5 and len(_events(store)) == 5 and len(_disables(store)) == 5
    assert {e["serial"] for e in _events(store)} == {record.serial, *(r.serial for r in others)}


def test_overlapping_holders_handle_disjoint_sets(setup, store, policies, clock):
    """A holder stalled past its lease and its successor run the job at the same moment."""
    ra, _, _, record, *_ = setup
    for i in range(20):
        _issue(ra, f"lock-{100 + i}")
    clock.advance(YEAR + SECOND)
    start = threading.Barrier(4)
    results, errors = [], []

    def run():
        start.wait()
        try:
            results.append(ExpiryJob(store, policies, clock).run(batch=3))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    handled = [x.serial for r in results for x in r]
    assert len(handled) == len(set(handled)) == 21
    assert len(_events(store)) == 21 and len(_disables(store)) == 21
    assert store.verify_audit()[0].ok


def test_renewal_window_listing_marks_and_gauges(setup, store, job, clock, policies):
    ra, _, _, lock, *_ = setup                                      # door-lock: 365d, window 30d
    sensor = _issue(ra, "env-00aa", "env-sensor", "env-sensor")     # env-sensor: 730d, window 60d
    proxy = _issue(ra, "proxy-a", "front-proxy", "front-proxy")     # front-proxy: 90d, window 15d
    clock.advance(dt.timedelta(days=80))                            # proxy: 10 days left, in its window
    assert [e.serial for e in job.expiring()] == [proxy.serial]
    assert [e.serial for e in job.expiring(within=dt.timedelta(days=5))] == []
    assert [e.serial for e in job.expiring(policy="door-lock")] == []
    clock.advance(dt.timedelta(days=300))                           # lock expired 15d ago, proxy long ago
    assert [e.serial for e in job.expiring()] == []
    assert {e.serial for e in job.expiring(include_expired=True)} == {lock.serial, proxy.serial}
    assert [e.serial for e in job.expiring(within=YEAR)] == [sensor.serial]
    clock.advance(dt.timedelta(days=320))                           # sensor: 730 - 700 = 30 days left
    assert [e.serial for e in job.expiring()] == [sensor.serial]
    now = clock.now()
    assert expiry_mark(store.certificate(sensor.serial), policies.get("env-sensor"), now) == RENEWAL_WINDOW
    assert expiry_mark(store.certificate(lock.serial), policies.get("door-lock"), now) == EXPIRED
    counts = job.counts()
    assert (counts["env-sensor"].renewal_due, counts["env-sensor"].expired) == (1, 0)
    assert (counts["door-lock"].renewal_due, counts["door-lock"].expired) == (0, 1)
    assert (counts["badge-reader"].renewal_due, counts["badge-reader"].expired) == (0, 0)
    text = Scrape(collectors=(StateCollector(store, clock, expiry=job),)).exposition().decode()
    assert 'device_ca_certificates_renewal_due{policy="env-sensor"} 1.0' in text
    assert 'device_ca_certificates_expired{policy="front-proxy"} 1.0' in text
    assert "device_ca_expiry_unhandled 2.0" in text                 # lock and proxy lapsed, the job has not run
    assert job.run() and "device_ca_expiry_unhandled 0.0" in \
        Scrape(collectors=(StateCollector(store, clock, expiry=job),)).exposition().decode()


def test_renewed_certificates_are_neither_due_nor_expired(setup, store, job, clock):
    ra, _, _, old, *_ = setup
    clock.advance(YEAR - dt.timedelta(days=10))
    new = _issue(ra, "lock-7", links=IssuanceLinks(supersedes=old.serial,
                                                   supersede_revoke_after=clock.now() + dt.timedelta(days=30)))
    assert [e.serial for e in job.expiring(within=YEAR * 2)] == [new.serial]
    clock.advance(dt.timedelta(days=11))
    assert job.counts()["door-lock"].expired == 0
