"""The console overview's queries (store/fleet.py, ra/overview.py) on the database under test, with
certificates issued by the real RA under a fixed clock: counts by policy and state, the expiry
buckets of the next 90 days, revocations per UTC day, pending enrollments, the outbox backlog."""
from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from device_ca.ca.clock import FixedClock
from device_ca.ca.issuer import Issuer, PublicUrls
from device_ca.ca.lint import pkilint_gate
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.overview import read_overview
from device_ca.store import IssuanceLinks, PendingRequest
from device_ca.store.fleet import day_edges, midnight
from helpers import T0, make_csr, software_ca

DAY = dt.timedelta(days=1)
YEAR = 365 * DAY                       # door-lock's validity


@pytest.fixture
def fleet(store, policies, clock):
    """door-lock certificates issued along a fixed clock:
    T0       lock-1 (later renewed by lock-1b), lock-5
    T0+20d   lock-2 (revoked at T0+40d+1h), lock-6
    T0+40d   lock-1b renewing lock-1; env-0001 (env-sensor, 730 days)
    T0+42d   lock-7 (revoked at once, at T0+42d)"""
    ca = software_ca(clock)
    issuer = Issuer(ca[2], ca[3], clock, PublicUrls("http://127.0.0.1:8080"), pkilint_gate)
    ra = RegistrationAuthority(store, policies, lambda: issuer, clock)

    def issue(device_id, policy="door-lock", links=None):
        return ra.issue(policy, make_csr(device_id, ou=policy), actor="test", links=links).record

    issued = {"lock-1": issue("lock-1"), "lock-5": issue("lock-5")}
    clock.advance(20 * DAY)
    issued |= {"lock-2": issue("lock-2"), "lock-6": issue("lock-6")}
    clock.advance(20 * DAY)
    issued["lock-1b"] = issue("lock-1", links=IssuanceLinks(supersedes=issued["lock-1"].serial,
                                                            supersede_revoke_after=T0 + 47 * DAY))
    issued["env-0001"] = issue("env-0001", policy="env-sensor")
    clock.advance(dt.timedelta(hours=1))
    ra.revoke(issued["lock-2"].serial, "cessationOfOperation", actor="test")
    clock.advance(2 * DAY - dt.timedelta(hours=1))
    issued["lock-7"] = issue("lock-7")
    ra.revoke(issued["lock-7"].serial, "keyCompromise", actor="test")
    return issued


def test_counts_by_policy_and_state(store, fleet):
    assert store.fleet.counts(T0 + 42 * DAY) == {"door-lock": {"good": 3, "renewed": 1, "revoked": 2},
                                                 "env-sensor": {"good": 1}}
    # a year on: lock-5 (T0) and lock-1 (renewed, T0) have expired; lock-6 (T0+20d) not yet
    assert store.fleet.counts(T0 + YEAR) == {"door-lock": {"good": 2, "expired": 2, "revoked": 2},
                                             "env-sensor": {"good": 1}}
    assert store.fleet.counts(T0 + YEAR - dt.timedelta(seconds=1))["door-lock"] == \
        {"good": 3, "renewed": 1, "revoked": 2}


def test_expiry_buckets_of_the_next_90_days(store, fleet):
    now = T0 + 300 * DAY
    found = store.fleet.expiring(day_edges(now, 90, 10))
    # good, unrenewed door-locks: lock-5 ends T0+365d (65 days on), lock-6 T0+385d (85 days on);
    # lock-1b (T0+405d) is beyond, lock-1 is renewed, lock-2 and lock-7 are revoked
    assert found.counts == (0, 0, 0, 0, 0, 0, 1, 0, 1)
    assert found.edges[0] == now and found.edges[-1] == now + 90 * DAY and len(found.edges) == 10
    # the boundary: a notAfter exactly on an edge belongs to the bucket that starts there
    on_edge = store.fleet.expiring(day_edges(T0 + YEAR - 10 * DAY, 20, 10))
    assert on_edge.counts == (0, 1)
    # a year and a day on: lock-5 has expired (not counted), lock-6 ends 19 days on, lock-1b 39 days on
    assert store.fleet.expiring(day_edges(T0 + YEAR + DAY, 90, 10)).counts == (0, 1, 0, 1, 0, 0, 0, 0, 0)


def test_revocations_per_day(store, fleet):
    first = midnight(T0 + 42 * DAY) - 29 * DAY
    found = store.fleet.revocations(day_edges(first, 30))
    expected = [0] * 30
    expected[27] = 1                  # lock-2 at T0+40d+1h: two days before the last day
    expected[29] = 1                  # lock-7 on the last day
    assert list(found.counts) == expected
    assert sum(store.fleet.revocations(day_edges(first + 30 * DAY, 30)).counts) == 0


def test_pending_requests_count_only_undecided(store, clock):
    def pending(n):
        csr = make_csr(f"guard-{n}")
        return PendingRequest(id=f"req-{n}", policy="door-lock", device_id=f"guard-{n}",
                              csr_sha256=hashlib.sha256(csr).hexdigest(), csr_der=csr, method="bootstrap-token",
                              state="pending", created_at=clock.now(), decided_at=None, decided_by=None, serial=None)
    assert store.fleet.pending_requests() == 0
    for n in range(3):
        store.enrollment.add_pending(pending(n), actor="test")
    store.enrollment.decide("req-1", False, actor="test", at=clock.now())
    assert store.fleet.pending_requests() == 2


def test_overview_reads_everything_at_the_clocks_time(store, fleet):
    overview = read_overview(store, FixedClock(T0 + 42 * DAY + dt.timedelta(hours=5)))
    assert overview.totals() == {"good": 4, "renewed": 1, "revoked": 2, "expired": 0, "not-yet-valid": 0}
    assert overview.policies == ["door-lock", "env-sensor"]
    assert len(overview.expiring.counts) == 9 and sum(overview.expiring.counts) == 0      # none within 90 days
    assert len(overview.revocations.counts) == 30
    assert overview.revocations.counts[-1] == 1 and overview.revocations.counts[-3] == 1
    assert overview.revocations.edges[-1] == midnight(T0 + 43 * DAY)
    assert overview.outbox.pending == len(store.outbox()) and overview.outbox.pending > 0
    assert overview.pending_requests == 0


def test_a_certificates_history_is_its_audit_events_newest_first(store, fleet):
    serial = fleet["lock-2"].serial
    history = store.audit_feed.about(serial)
    assert [e.action for e in history][:1] == ["certificate.revoked"]
    assert all(e.serial == serial for e in history) and len(history) >= 2
    assert [e.seq for e in history] == sorted((e.seq for e in history), reverse=True)
    assert history[0].actor == "test" and "cessationOfOperation" in history[0].details
    assert store.audit_feed.about(serial, limit=1) == history[:1]
    assert store.audit_feed.about("00" * 18) == []


def test_recent_batches_with_their_progress(store):
    from device_ca.store.batches import Batch, NewItem
    from device_ca.store.records import AuditEvent

    for n, (items, failures) in enumerate([(3, 0), (5, 2), (1, 1)]):
        batch = Batch(id=f"line-{n}", policy="env-sensor", input_sha256=f"{n}" * 64, items=items, keygen=False,
                      secret_sha256=None, state="queued", created_at=T0 + n * DAY, created_by="station:test",
                      finished_at=None)
        store.batches.open(batch, lambda items=items, failures=failures: [
            NewItem(f"env-{n:02x}{i:02x}", i, None if i < failures else b"csr", "no CSR" if i < failures else None)
            for i in range(items)], AuditEvent(action="batch.opened", actor="test", at=T0, details={}))
    store.batches.fail("line-0", [("env-0001", "policy rejected")])
    found = store.batches.recent()
    assert [b.id for b, _ in found] == ["line-2", "line-1", "line-0"]                # newest first
    assert {b.id: dict(c) for b, c in found} == {"line-2": {"failed": 1}, "line-1": {"failed": 2, "pending": 3},
                                                 "line-0": {"failed": 1, "pending": 2}}
    assert [b.id for b, _ in store.batches.recent(limit=1)] == ["line-2"]
    assert found[0][0].created_at == T0 + 2 * DAY
