"""Bootstrap tokens listed and withdrawn (issue 18, item 6) against a real database (SQLite or
PostgreSQL) with a software key: a withdrawn or expired token is refused like a wrong one, nothing
is signed or stored, and a withdrawal that lands while a request is signing keeps the certificate
from being recorded."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca.issuer import Issuer, PublicUrls
from device_ca.ca.lint import pkilint_gate
from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.enrollment import BAD_TOKEN, Caller, EstService
from helpers import CountingSigner, make_csr, software_ca

POLICY = "door-lock"


@pytest.fixture
def est(store, policies, clock):
    ca = software_ca(clock)
    signer = CountingSigner(ca[3])
    issuer = Issuer(ca[2], signer, clock, PublicUrls("http://127.0.0.1:8080"), pkilint_gate)
    service = EstService(RegistrationAuthority(store, policies, lambda: issuer, clock), store, policies, clock,
                         lambda: [ca[2]])
    service.signer = signer
    return service


def _enroll(est, device: str, secret: str):
    csr = make_csr(device, sans=(), encoding=Encoding.DER)
    return est.enroll(POLICY, csr, Caller("192.0.2.7", basic=(device, secret)))


def _counts(store) -> dict[str, int]:
    with store.db.engine.connect() as c:
        return {t: c.exec_driver_sql(f"SELECT COUNT(*) FROM {t}").scalar()
                for t in ("serial_reservations", "certificates", "audit_events", "outbox")}


def test_list_shows_each_state_and_no_secret(est, store, clock):
    used = est.create_token(POLICY, "lock-1", dt.timedelta(hours=1), "cli:alice")
    open_ = est.create_token(POLICY, "lock-2", dt.timedelta(hours=1), "cli:alice")
    withdrawn = est.create_token(POLICY, "lock-3", dt.timedelta(hours=1), "cli:alice")
    expired = est.create_token("badge-reader", "br-4", dt.timedelta(minutes=1), "cli:alice")
    _enroll(est, "lock-1", used.secret)
    est.withdraw_token(withdrawn.id, "cli:bob")
    clock.advance(dt.timedelta(minutes=2))
    now = clock.now()
    tokens = {t.id: t for t in store.enrollment.tokens()}
    assert {t.state(now) for t in tokens.values()} == {"used", "open", "withdrawn", "expired"}
    assert (tokens[used.id].state(now), tokens[open_.id].state(now), tokens[withdrawn.id].state(now),
            tokens[expired.id].state(now)) == ("used", "open", "withdrawn", "expired")
    assert tokens[withdrawn.id].withdrawn_by == "cli:bob" and tokens[used.id].serial is not None
    assert [t.id for t in store.enrollment.tokens(policy="badge-reader")] == [expired.id]
    assert [t.id for t in store.enrollment.tokens(device_id="lock-3")] == [withdrawn.id]
    fields = {f.name for f in dataclasses.fields(tokens[used.id])}
    assert not {"secret", "secret_sha256"} & fields                  # the listing cannot carry one


def test_withdrawn_token_is_refused_like_a_wrong_one_and_changes_nothing(est, store):
    token = est.create_token(POLICY, "lock-5", dt.timedelta(hours=1), "cli:alice")
    est.withdraw_token(token.id, "cli:bob")
    events = _counts(store)["audit_events"]
    before, signatures = _counts(store), est.signer.calls
    with pytest.raises(DeviceCAError) as refused:
        _enroll(est, "lock-5", token.secret)
    with pytest.raises(DeviceCAError) as wrong:
        _enroll(est, "lock-5", "not-the-secret")
    assert (refused.value.kind, refused.value.detail) == (wrong.value.kind, wrong.value.detail) \
        == (Kind.UNAUTHORIZED, BAD_TOKEN)
    assert _counts(store) == before and est.signer.calls == signatures and events == before["audit_events"]
    assert store.enrollment.tokens(device_id="lock-5")[0].used_at is None


def test_expired_token_is_refused_like_a_wrong_one(est, store, clock):
    token = est.create_token(POLICY, "lock-6", dt.timedelta(minutes=5), "cli:alice")
    clock.advance(dt.timedelta(minutes=5))
    before = _counts(store)
    with pytest.raises(DeviceCAError) as refused:
        _enroll(est, "lock-6", token.secret)
    assert (refused.value.kind, refused.value.detail) == (Kind.UNAUTHORIZED, BAD_TOKEN)
    assert _counts(store) == before


def test_withdrawal_writes_its_audit_event_in_the_same_transaction(est, store):
    token = est.create_token(POLICY, "lock-7", dt.timedelta(hours=1), "cli:alice")
    est.withdraw_token(token.id, "cli:bob")
    report, head = store.verify_audit()
    with store.db.engine.connect() as c:
        action, actor, device, details = c.exec_driver_sql(
            "SELECT action, actor, device_id, details FROM audit_events ORDER BY seq DESC LIMIT 1").one()
    assert report.ok and head.startswith("2:")
    assert (action, actor, device) == ("token.withdrawn", "cli:bob", "lock-7") and token.id in details
    assert token.secret not in details


def test_withdraw_refuses_used_twice_and_unknown(est, store):
    token = est.create_token(POLICY, "lock-8", dt.timedelta(hours=1), "cli:alice")
    _enroll(est, "lock-8", token.secret)
    other = est.create_token(POLICY, "lock-9", dt.timedelta(hours=1), "cli:alice")
    est.withdraw_token(other.id, "cli:bob")
    before = _counts(store)
    for token_id, kind in ((token.id, Kind.CONFLICT), (other.id, Kind.CONFLICT), ("0123456789abcdef", Kind.NOT_FOUND)):
        with pytest.raises(DeviceCAError) as refused:
            est.withdraw_token(token_id, "cli:bob")
        assert refused.value.kind is kind
    assert _counts(store) == before


def test_withdrawal_while_the_request_signs_keeps_the_certificate_out(est, store):
    """The token was claimed with the serial reservation, then withdrawn before the certificate is
    recorded: the device gets 401, no certificate exists, and the serial stays reserved for
    ``reconcile`` (never reused, never good)."""
    token = est.create_token(POLICY, "lock-10", dt.timedelta(hours=1), "cli:alice")
    sign = est.signer.sign

    def withdraw_then_sign(data, algorithm):
        if est.signer.calls == 0:
            est.withdraw_token(token.id, "cli:bob")
        return sign(data, algorithm)

    est.signer.sign = withdraw_then_sign
    with pytest.raises(DeviceCAError) as refused:
        _enroll(est, "lock-10", token.secret)
    assert refused.value.kind is Kind.UNAUTHORIZED and "not issued" in refused.value.detail
    counts = _counts(store)
    assert counts["certificates"] == 0 and counts["serial_reservations"] == 1
    assert store.enrollment.tokens(device_id="lock-10")[0].state(est.clock.now()) == "withdrawn"
    with pytest.raises(DeviceCAError) as again:
        _enroll(est, "lock-10", token.secret)
    assert again.value.kind is Kind.UNAUTHORIZED


def test_a_token_held_by_an_attempt_an_outage_cut_off_is_busy_not_wrong_until_the_claim_lapses(est, store, clock):
    """An attempt claimed the token, then the database went away before the claim could be given
    back (the failover tests do this for real): the device's retry is told to come back (202,
    PENDING), not that its credentials are wrong; once the claim has lapsed it gets its
    certificate. Used, withdrawn or expired tokens still get 401."""
    from device_ca.store.enrollment import CLAIM_SECONDS, claim

    token = est.create_token(POLICY, "lock-11", dt.timedelta(hours=1), "cli:alice")
    with store.db.direct() as c:                                    # the cut-off attempt's claim
        assert claim(c, token.id, clock.now())
    before = _counts(store)
    with pytest.raises(DeviceCAError) as busy:
        _enroll(est, "lock-11", token.secret)
    assert busy.value.kind is Kind.PENDING and "retry later" in busy.value.detail
    assert _counts(store) == before                                 # nothing reserved, signed or audited
    clock.advance(dt.timedelta(seconds=CLAIM_SECONDS + 1))
    assert _enroll(est, "lock-11", token.secret).record.device_id == "lock-11"
    with pytest.raises(DeviceCAError) as used:
        _enroll(est, "lock-11", token.secret)
    assert used.value.kind is Kind.UNAUTHORIZED
