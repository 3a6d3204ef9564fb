"""Prometheus metrics of the web edge and the scrape (GET /metrics, text format 0.0.4); the list with
meanings is docs/metrics.md, the alert rules deploy/prometheus/alerts.yml.

Counters live in prometheus_client's multiprocess files when PROMETHEUS_MULTIPROC_DIR is set
(``device-ca serve``: one file per worker, summed at the scrape). Moving such a counter costs a
lock and an mmap write, microseconds, too much for each of the ~80,000 OCSP answers a second: the
OCSP path counts in plain integers of its process (``OcspTally``) that ``Fold`` moves into the
counters every second and before a scrape that process serves. What the database knows (CRL,
outbox, pre-signing, leases, expiry) is read at the scrape by ``StateCollector``.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from device_ca.errors import DeviceCAError
from device_ca.web.status import OCSP_BUCKETS, OcspTally

log = logging.getLogger("device_ca.web.metrics")

HTTP_REQUESTS = Counter("device_ca_http_requests_total", "HTTP requests by endpoint and status",
                        ["endpoint", "status"])
HTTP_SECONDS = Histogram("device_ca_http_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
EST_SECONDS = Histogram("device_ca_est_request_seconds", "EST request latency by operation and status class",
                        ["operation", "status"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
OCSP_SECONDS = Histogram("device_ca_ocsp_request_seconds",
                         "OCSP request latency on the event loop, from the whole request read to the answer made",
                         buckets=OCSP_BUCKETS)
OCSP_ANSWERS = Counter("device_ca_ocsp_answers_total",
                       "OCSP answers by the status they state (good, revoked, unknown, mixed; or the error response "
                       "status), their source (presigned, cached, live; unsigned for error responses) and the "
                       "issuing CA generation whose publisher answered", ["status", "source", "ca"])
RATE_LIMITED = Counter("device_ca_rate_limited_total",
                       "Requests refused by a rate limit: est (HTTPS listener, 429) or ocsp_nonce (nonce answered "
                       "without it beyond the client's live-signing budget)", ["limit"])


class Fold:
    """Moves the growth of a process's OCSP counts since the last fold into the Prometheus metrics:
    each publisher's ``answered`` (StatusPublisher.answered, labelled with its CA; ``publishers``:
    those this process built, every generation it answered for) and ``tally`` (StatusApp.tally)."""

    def __init__(self, publishers: Callable[[], list], tally: OcspTally):
        self.publishers = publishers
        self.tally = tally
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, str, str], int] = {}
        self._buckets = [0] * (len(OCSP_BUCKETS) + 1)
        self._seconds = 0.0
        self._nonce_refused = 0

    def __call__(self) -> None:
        tally = self.tally
        with self._lock:
            for publisher in self.publishers():
                for (status, source), value in list(publisher.answered.items()):
                    key = (status, source, publisher.ca)
                    grown = value - self._answers.get(key, 0)
                    if grown:
                        OCSP_ANSWERS.labels(*key).inc(grown)
                        self._answers[key] = value
            buckets, seconds = list(tally.buckets), tally.seconds
            if buckets != self._buckets:
                # Histogram has no call to add n observations: its per-bucket values are filled as
                # observe() fills them in multiprocess mode (each observation in its first bucket).
                for i, (now, before) in enumerate(zip(buckets, self._buckets)):
                    if now != before:
                        OCSP_SECONDS._buckets[i].inc(now - before)
                OCSP_SECONDS._sum.inc(seconds - self._seconds)
                self._buckets, self._seconds = buckets, seconds
            refused = tally.nonce_refused
            if refused != self._nonce_refused:
                RATE_LIMITED.labels("ocsp_nonce").inc(refused - self._nonce_refused)
                self._nonce_refused = refused

    def start(self, interval: float = 1.0) -> threading.Thread:
        def loop() -> None:
            while True:
                time.sleep(interval)
                try:
                    self()
                except Exception:  # noqa: BLE001 - metrics must not stop; the next round retries
                    log.exception("folding OCSP counts into the metrics failed")

        thread = threading.Thread(target=loop, name="device-ca-metrics-fold", daemon=True)
        thread.start()
        return thread


class StateCollector:
    """Gauges read from the database at each scrape, with a few aggregate queries; with the database
    down, only ``device_ca_database_up 0``. CRL and pre-signing gauges carry the label ``ca``, one
    per issuing CA generation that still signs status (``cas``, read at each scrape)."""

    def __init__(self, store, clock, cas: Callable[[], list[str]] = lambda: ["issuing"], expiry=None):
        self.store = store
        self.clock = clock
        self.cas = cas
        self.expiry = expiry            # ra.expiry.ExpiryJob: the per-policy renewal-window counts

    def collect(self):
        from device_ca.ra.publication import OCSP_VALIDITY

        up = GaugeMetricFamily("device_ca_database_up", "1 if this node read the database for this scrape, else 0")
        try:
            now = self.clock.now()
            cas = self.cas()
            crls = {ca: self.store.status.latest_crl_times(ca) for ca in cas}
            backlog = self.store.queue.backlog()
            presigns = {ca: self.store.status.presign_backlog(ca, now - OCSP_VALIDITY / 4, now, OCSP_VALIDITY / 4)
                        for ca in cas}
            leases = [(lease.name, lease.holder) for lease in self.store.leases.held(now)]
            lag = self.store.expiry.lag(now)
            expiring = self.expiry.counts() if self.expiry is not None else {}
        except DeviceCAError as exc:
            log.warning("metrics: database unavailable: %s", exc.detail)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        numbers = _by_ca("device_ca_crl_number", "CRL number of the newest CRL")
        ages = _by_ca("device_ca_crl_age_seconds", "Seconds since the newest CRL's thisUpdate")
        next_updates = _by_ca("device_ca_crl_next_update_in_seconds",
                              "Seconds until the newest CRL's nextUpdate (negative: relying parties hold an expired CRL)")
        for ca, crl in crls.items():
            if crl is not None:
                number, this_update, next_update = crl
                numbers.add_metric([ca], number)
                ages.add_metric([ca], (now - this_update).total_seconds())
                next_updates.add_metric([ca], (next_update - now).total_seconds())
        yield from (numbers, ages, next_updates)
        yield _gauge("device_ca_outbox_pending", "Outbox rows not yet applied (Keycloak changes)", backlog.pending)
        yield _gauge("device_ca_outbox_oldest_pending_age_seconds", "Age of the oldest pending outbox row (0: none)",
                     (now - backlog.oldest).total_seconds() if backlog.oldest else 0)
        yield _gauge("device_ca_outbox_failing", "Pending outbox rows that failed at least once", backlog.failing)
        info = GaugeMetricFamily("device_ca_outbox_last_error_info",
                                 "The error of the newest failing pending outbox row (absent when none fails)",
                                 labels=["error"])
        if backlog.last_error:
            info.add_metric([backlog.last_error[:200]], 1)
        yield info
        presign_due = _by_ca("device_ca_ocsp_presign_due", "Unexpired certificates whose pre-signed OCSP answer is due "
                             "(missing, stale status, other responder, or older than a quarter of its validity)")
        presign_lag = _by_ca("device_ca_ocsp_presign_lag_seconds", "How long the longest-waiting due answer has "
                             "been due (0: none)")
        for ca, presign in presigns.items():
            presign_due.add_metric([ca], presign.due)
            presign_lag.add_metric([ca], max(0.0, (now - presign.due_since).total_seconds()) if presign.due_since
                                   else 0)
        yield from (presign_due, presign_lag)
        holders = GaugeMetricFamily("device_ca_lease_holder", "1 per unexpired lease, labelled with its holder",
                                    labels=["name", "holder"])
        for name, holder in leases:
            holders.add_metric([name, holder], 1)
        yield holders
        due = GaugeMetricFamily("device_ca_certificates_renewal_due", "Good, not renewed certificates inside "
                                "their policy's renewal window (notAfter not yet passed)", labels=["policy"])
        expired = GaugeMetricFamily("device_ca_certificates_expired", "Good, not renewed certificates past "
                                    "notAfter: devices that let their certificate lapse", labels=["policy"])
        for policy, counts in sorted(expiring.items()):
            due.add_metric([policy], counts.renewal_due)
            expired.add_metric([policy], counts.expired)
        yield due
        yield expired
        yield _gauge("device_ca_expiry_unhandled", "Certificates past notAfter whose expiry the server has not "
                     "handled yet (audit event, Keycloak disable)", lag.unhandled)
        yield _gauge("device_ca_expiry_lag_seconds", "Seconds since the notAfter of the oldest unhandled expiry "
                     "(0: none)", max(0.0, (now - lag.oldest).total_seconds()) if lag.oldest else 0)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _by_ca(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["ca"])


class Scrape:
    """What GET /metrics of one listener reports: the counters (this process's, or every worker's
    files in multiprocess mode), after ``before`` ran (folds), plus ``collectors``."""

    def __init__(self, collectors: tuple = (), before: tuple[Callable[[], None], ...] = ()):
        self.collectors = collectors
        self.before = before

    def exposition(self) -> bytes:
        import os

        from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

        for fold in self.before:
            fold()
        registry = CollectorRegistry(auto_describe=False)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(_Each(REGISTRY))
        for collector in self.collectors:
            registry.register(collector)
        return generate_latest(registry)


class _Each:
    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        return self.registry.collect()
