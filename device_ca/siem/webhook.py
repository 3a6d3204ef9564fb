"""Every audit event delivered to a SIEM over HTTPS, in order, at least once (docs/audit-export.md).

Durability comes from the audit chain itself, not from an outbox row per event: each event is
written in the transaction of the change it records, with a gap-free ``seq``, so the chain is
already the ordered log that an outbox would copy. What delivery adds is the receiver's cursor
(store/audit_feed.py): the last ``seq`` it confirmed with a 2xx, kept in the database and moved
only forward. After a restart, a crash or a hand-over to another node, delivery starts after
the cursor: nothing is lost, and what was sent but not confirmed is sent again (the receiver
drops what it already has by ``seq``).

Events go in batches of up to ``BATCH`` consecutive events per POST: a bulk run writes
thousands of events a minute, and one round trip per event would make the receiver's latency
the CA's backlog. A batch is confirmed whole or not at all. Each body is signed with
HMAC-SHA256 under a secret read from ``DEVICE_CA_AUDIT_WEBHOOK_SECRET`` or
``DEVICE_CA_AUDIT_WEBHOOK_SECRET_FILE`` (never a setting, the command line, the database or a
log line). While the receiver is down or answers anything but 2xx, delivery stops at the first
unconfirmed event and retries with exponential backoff (1 s doubling to 60 s), counted in the
cursor's row so that the backoff holds across restarts and nodes. A lease in the database lets one deliverer
at a time work, across the server's workers and nodes; it is extended before each POST and let go
when a worker exits, so that a crashed holder delays delivery by at most ``LEASE_TTL``.
"""
from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import hmac
import http.client
import json
import logging
import os
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from device_ca.ca.clock import Clock
from device_ca.config import WebhookSettings
from device_ca.errors import DeviceCAError, Kind
from device_ca.siem.formats import event_dict
from device_ca.store.audit_feed import AuditFeed
from device_ca.runtime import start_rounds
from device_ca.store.leases import LeaseRepo, new_holder

log = logging.getLogger("device_ca.siem")

CURSOR = "webhook"
LEASE = "audit-webhook"
LEASE_TTL = dt.timedelta(seconds=20)    # extended before every POST, whose timeout is at most 15 s
BATCH = 100
BACKOFF_MAX = 60.0
SIGNATURE_HEADER = "X-Device-CA-Signature"
SECRET_ENV = "DEVICE_CA_AUDIT_WEBHOOK_SECRET"
MIN_SECRET = 16


def secret_from_env(environ: Mapping[str, str] = os.environ) -> bytes:
    """The HMAC key, from the environment or the file it names; refused if missing or short."""
    secret = environ.get(SECRET_ENV)
    if not secret and environ.get(f"{SECRET_ENV}_FILE"):
        path = environ[f"{SECRET_ENV}_FILE"]
        try:
            secret = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise DeviceCAError(Kind.MALFORMED, f"{SECRET_ENV}_FILE {path}: {exc.strerror}") from None
    if not secret:
        raise DeviceCAError(Kind.MALFORMED, f"audit_webhook_url is set: give the HMAC secret in {SECRET_ENV} or "
                            f"{SECRET_ENV}_FILE")
    if len(secret) < MIN_SECRET:
        raise DeviceCAError(Kind.MALFORMED, f"the audit webhook secret must have at least {MIN_SECRET} characters")
    return secret.encode()


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff(failures: int) -> dt.timedelta:
    """1 s, 2 s, 4 s, ... up to ``BACKOFF_MAX`` after the ``failures``-th failure in a row."""
    return dt.timedelta(seconds=min(BACKOFF_MAX, 2.0 ** max(0, failures - 1)))


class Receiver:
    """POSTs one body to the receiver over verified TLS; returns the HTTP status (OSError: no answer)."""

    def __init__(self, settings: WebhookSettings, secret: bytes):
        parsed = urllib.parse.urlsplit(settings.url)
        self.host, self.port = parsed.hostname, parsed.port or 443
        self.target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        self.where = f"https://{parsed.netloc}{parsed.path}"          # for messages: no query string
        self.timeout = settings.timeout
        self._context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
        self._sign = lambda body: signature(secret, body)            # the secret stays in this closure

    def __repr__(self) -> str:
        return f"Receiver({self.where})"

    def post(self, body: bytes) -> int:
        connection = http.client.HTTPSConnection(self.host, self.port, context=self._context, timeout=self.timeout)
        try:
            connection.request("POST", self.target, body=body, headers={
                "Content-Type": "application/json", "User-Agent": "device-ca", SIGNATURE_HEADER: self._sign(body)})
            response = connection.getresponse()
            response.read(65536)
            return response.status
        finally:
            connection.close()


@dataclass
class DeliveryReport:
    delivered: int = 0
    batches: int = 0
    waiting: bool = False          # the receiver failed: delivery stopped and waits
    leased: bool = True            # False: another deliverer holds the lease
    last_error: str | None = None


class WebhookDeliverer:
    def __init__(self, feed: AuditFeed, leases: LeaseRepo, clock: Clock, post: Callable[[bytes], int],
                 where: str = "the audit webhook", holder: str | None = None, batch: int = BATCH):
        self.feed = feed
        self.leases = leases
        self.clock = clock
        self.post = post
        self.where = where
        self.holder = holder or new_holder()
        self.batch = batch
        self._lock = threading.Lock()

    def deliver(self) -> DeliveryReport:
        """Send what follows the cursor, batch by batch, until caught up or the receiver fails."""
        with self._lock:
            report = DeliveryReport()
            now = self.clock.now()
            cursor = self.feed.cursor(CURSOR)
            if cursor.failures and cursor.last_attempt_at and now < cursor.last_attempt_at + backoff(cursor.failures):
                report.waiting, report.last_error = True, cursor.last_error
                return report
            if not self.leases.acquire(LEASE, self.holder, now, LEASE_TTL):
                report.leased = False
                return report
            after = self.feed.cursor(CURSOR).seq
            while events := self.feed.events(after, self.batch):
                if not self.leases.acquire(LEASE, self.holder, self.clock.now(), LEASE_TTL):
                    report.leased = False          # taken over meanwhile (this holder stalled): stop here
                    return report
                body = json.dumps({"events": [event_dict(e) for e in events]}, ensure_ascii=False,
                                  separators=(",", ":")).encode()
                error = self._send(body)
                now = self.clock.now()
                if error is not None:
                    failures = self.feed.failed(CURSOR, error, now)
                    report.waiting, report.last_error = True, error
                    log.warning("audit webhook %s: events %d-%d not delivered (failure %d, next try in %.0f s): %s",
                                self.where, events[0].seq, events[-1].seq, failures,
                                backoff(failures).total_seconds(), error)
                    return report
                self.feed.advance(CURSOR, events[-1].seq, events[-1].hash, now)
                after = events[-1].seq
                report.delivered += len(events)
                report.batches += 1
            return report

    def _send(self, body: bytes) -> str | None:
        try:
            status = self.post(body)
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        return None if 200 <= status < 300 else f"HTTP {status}"

    def release(self) -> None:
        self.leases.release(LEASE, self.holder, self.clock.now())


def start_webhook(feed: AuditFeed, deliverer: Callable[[], WebhookDeliverer], interval: float = 1.0) -> threading.Thread:
    """A daemon thread that delivers new audit events every ``interval`` seconds (``device-ca serve``);
    ``deliverer`` is built on the first round that finds events after the cursor."""
    def build() -> WebhookDeliverer:
        current = deliverer()
        atexit.register(current.release)     # a worker that stops lets the next one start at once
        return current

    return start_rounds("audit webhook", lambda: feed.head_seq() > feed.cursor(CURSOR).seq, build,
                        lambda current: current.deliver(), interval, BACKOFF_MAX, log)
