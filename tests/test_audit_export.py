"""Audit events out (issue 18, item 5) on the database under test (SQLite and PostgreSQL): the
export formats, and the webhook deliverer against a real local HTTPS receiver (tests/siem_receiver.py)
that is down, then failing, then accepting."""
from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from device_ca.config import Settings, WebhookSettings
from device_ca.errors import DeviceCAError, Kind
from device_ca.siem import formats
from device_ca.siem.webhook import CURSOR, LEASE, Receiver as Sender, WebhookDeliverer, backoff, secret_from_env
from device_ca.store import AuditEvent
from device_ca.store import audit as audit_chain
from helpers import T0
from integration.tls_tools import free_port, make_pki
from siem_receiver import Receiver, chain_problems

SECRET = "s3cret-for-the-siem-0123456789"
AWKWARD = {"note": "Zürich | a=b \\ c\nnext", "list": [3, "é"], "nested": {"b": 1, "a": None}}


def _events(store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        with store.db.write() as s:
            audit_chain.append(s, AuditEvent(action="token.created", actor="cli:alice", at=T0 + dt.timedelta(seconds=i),
                                             device_id=f"lock-{i}", details={"i": i, **AWKWARD}))


def test_json_events_carry_what_a_receiver_needs_to_check_the_chain(store):
    _events(store, 5)
    exported = [json.loads(formats.jsonl(e)) for e in store.audit_feed.events(0, 100)]
    assert [e["seq"] for e in exported] == [1, 2, 3, 4, 5] and chain_problems(exported) == []
    assert exported[0]["details"]["note"] == AWKWARD["note"] and exported[0]["at"] == "2026-11-28T12:00:00Z"
    assert exported[-1]["hash"] == store.verify_audit()[1].split(":")[1]
    assert [e.seq for e in store.audit_feed.events(3, 1)] == [4]
    forged = dict(exported[2], actor="cli:mallory")
    assert chain_problems(exported[:2] + [forged] + exported[3:]) == ["seq 3: hash does not match"]


def test_cef_lines_escape_what_cef_reserves(store):
    _events(store, 1)
    with store.db.write() as s:
        audit_chain.append(s, AuditEvent(action="a|b", actor="x=y", at=T0, serial="0a"))
    first, second = (formats.cef(e) for e in store.audit_feed.events(0, 10))
    assert first.startswith("CEF:0|device-ca|device-ca|") and "|token.created|token.created|3|" in first
    assert "\n" not in first and "externalId=1 " in first and "suser=cli:alice" in first
    assert "cs2Label=deviceId cs2=lock-0" in first and "a\\=b" in first
    assert json.loads(_cef_unescape(first.split(" msg=", 1)[1])) == {"i": 0, **AWKWARD}
    assert "|a\\|b|a\\|b|3|" in second and "suser=x\\=y" in second and "cs1Label=serial cs1=0a" in second


def _cef_unescape(value: str) -> str:
    r"""CEF extension value escapes (\\, \=, \n, \r) undone, as a CEF parser does."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), value)


def test_cursor_moves_only_forward(store):
    assert store.audit_feed.cursor(CURSOR).seq == 0
    assert store.audit_feed.advance(CURSOR, 5, "e" * 64, T0)
    assert not store.audit_feed.advance(CURSOR, 3, "c" * 64, T0)       # a late answer to an earlier holder
    assert store.audit_feed.failed(CURSOR, "HTTP 503", T0) == 1
    cursor = store.audit_feed.cursor(CURSOR)
    assert (cursor.seq, cursor.hash, cursor.failures, cursor.last_error) == (5, "e" * 64, 1, "HTTP 503")


@pytest.fixture
def receiver(tmp_path):
    pki = make_pki(tmp_path / "pki")
    r = Receiver(free_port(), pki.server_cert, pki.server_key, SECRET.encode())
    r.pki = pki
    yield r
    r.stop()


def _deliverer(store, clock, receiver, holder="node-a", batch=3) -> WebhookDeliverer:
    sender = Sender(WebhookSettings(url=receiver.url, ca_file=receiver.pki.ca_cert, timeout=5), SECRET.encode())
    return WebhookDeliverer(store.audit_feed, store.leases, clock, sender.post, sender.where, holder=holder,
                            batch=batch)


def test_receiver_down_then_failing_then_back_gets_every_event_in_order(store, clock, receiver):
    _events(store, 7)
    deliverer = _deliverer(store, clock, receiver)
    down = deliverer.deliver()                                    # nobody listening
    assert down.waiting and down.delivered == 0 and "ConnectionRefused" in down.last_error
    receiver.start("fail")
    assert deliverer.deliver().waiting and receiver.requests == 0  # still inside the 1 s backoff: not tried
    clock.advance(backoff(1))
    failing = deliverer.deliver()
    assert failing.last_error == "HTTP 503" and receiver.requests == 1
    assert store.audit_feed.cursor(CURSOR).failures == 2
    _events(store, 2, start=7)                                   # the log grows while the receiver fails
    receiver.mode = "ok"
    clock.advance(backoff(2))
    report = deliverer.deliver()
    assert (report.delivered, report.batches, report.waiting) == (9, 3, False)
    assert receiver.batches == [[1, 2, 3], [4, 5, 6], [7, 8, 9]] and receiver.bad_signatures == 0
    assert chain_problems(receiver.in_order()) == []
    cursor = store.audit_feed.cursor(CURSOR)
    assert (cursor.seq, cursor.failures, cursor.last_error) == (9, 0, None)
    assert cursor.hash == receiver.in_order()[-1]["hash"]
    assert deliverer.deliver().delivered == 0 and receiver.requests == 4       # caught up: nothing sent


def test_an_answer_lost_after_the_receiver_took_the_batch_means_it_comes_again(store, clock, receiver):
    """At least once: the receiver has the events but device-ca never saw the 2xx (a crash, a cut
    connection); the cursor stays, the batch is sent again, and de-duplication by seq keeps one copy."""
    _events(store, 4)
    receiver.start()
    deliverer = _deliverer(store, clock, receiver, batch=10)
    post = deliverer.post

    def lost_answer(body: bytes) -> int:
        post(body)
        raise ConnectionResetError("connection reset before the answer")

    deliverer.post = lost_answer
    assert deliverer.deliver().waiting and store.audit_feed.cursor(CURSOR).seq == 0
    deliverer.post = post
    clock.advance(backoff(1))
    assert deliverer.deliver().delivered == 4
    assert receiver.batches == [[1, 2, 3, 4], [1, 2, 3, 4]] and receiver.arrival_order() == [1, 2, 3, 4]


def test_one_deliverer_at_a_time(store, clock, receiver):
    _events(store, 2)
    receiver.start()
    first, second = _deliverer(store, clock, receiver, "node-a"), _deliverer(store, clock, receiver, "node-b")
    assert first.deliver().delivered == 2
    _events(store, 1, start=2)
    assert not second.deliver().leased and store.leases.holder(LEASE, clock.now()) == "node-a"
    first.release()
    assert second.deliver().delivered == 1 and receiver.arrival_order() == [1, 2, 3]


def test_a_wrong_secret_is_refused_by_the_receiver_and_nothing_is_skipped(store, clock, receiver):
    _events(store, 2)
    receiver.start()
    wrong = Sender(WebhookSettings(url=receiver.url, ca_file=receiver.pki.ca_cert), b"not-the-shared-secret")
    deliverer = WebhookDeliverer(store.audit_feed, store.leases, clock, wrong.post)
    assert deliverer.deliver().last_error == "HTTP 401" and receiver.bad_signatures == 1
    assert store.audit_feed.cursor(CURSOR).seq == 0 and receiver.events == {}


def test_an_untrusted_receiver_certificate_is_refused(store, clock, receiver):
    _events(store, 1)
    receiver.start()
    untrusted = Sender(WebhookSettings(url=receiver.url), SECRET.encode())          # the system's CAs only
    report = WebhookDeliverer(store.audit_feed, store.leases, clock, untrusted.post).deliver()
    assert "CERTIFICATE_VERIFY_FAILED" in report.last_error and receiver.requests == 0


def test_the_secret_comes_from_the_environment_or_a_file_only(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    assert secret_from_env({"DEVICE_CA_AUDIT_WEBHOOK_SECRET_FILE": str(secret_file)}) == SECRET.encode()
    assert secret_from_env({"DEVICE_CA_AUDIT_WEBHOOK_SECRET": SECRET}) == SECRET.encode()
    for environ in ({}, {"DEVICE_CA_AUDIT_WEBHOOK_SECRET": "short"},
                    {"DEVICE_CA_AUDIT_WEBHOOK_SECRET_FILE": str(tmp_path / "missing")}):
        with pytest.raises(DeviceCAError) as refused:
            secret_from_env(environ)
        assert refused.value.kind is Kind.MALFORMED and SECRET not in refused.value.detail
    home = tmp_path / "home"
    home.mkdir()
    (home / "device-ca.toml").write_text(f'audit_webhook_secret = "{SECRET}"\n')
    with pytest.raises(DeviceCAError, match="unknown settings audit_webhook_secret"):
        Settings.load({"DEVICE_CA_HOME": str(home)})


@pytest.mark.parametrize("url", ["http://siem.example/events", "https://user:pw@siem.example/events", "siem.example"])
def test_the_webhook_url_is_https_without_credentials(tmp_path, url):
    with pytest.raises(DeviceCAError) as refused:
        Settings.load({"DEVICE_CA_HOME": str(tmp_path), "DEVICE_CA_AUDIT_WEBHOOK_URL": url})
    assert refused.value.kind is Kind.MALFORMED
    settings = Settings.load({"DEVICE_CA_HOME": str(tmp_path), "DEVICE_CA_AUDIT_WEBHOOK_URL": "https://siem.example/e",
                              "DEVICE_CA_AUDIT_WEBHOOK_CA_FILE": "siem-ca.pem"})
    assert settings.audit_webhook.url == "https://siem.example/e" and settings.audit_webhook.ca_file.is_absolute()
