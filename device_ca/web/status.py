"""The relying parties' hot path, answered before the Flask app (web/front.py calls ``handle``):
OCSP (RFC 6960 Appendix A.1: POST /ocsp, GET /ocsp/<url-encoded base64>) and the CRL
(GET /crl/<ca>.crl, application/pkix-crl). Caching headers per RFC 5019 §6.2 / RFC 9919 §7.
"""
from __future__ import annotations

import bisect
import datetime as dt
import email.utils
import hashlib
import logging
import time
from typing import Callable

from device_ca.ca import ocsp
from device_ca.errors import DeviceCAError
from device_ca.ra.publication import OcspAnswer, StatusPublisher
from device_ca.runtime import BoundedCache
from device_ca.store.status import StoredCrl
from device_ca.web.ratelimit import RateLimiter

log = logging.getLogger("device_ca.web.status")

OCSP_RESPONSE = "application/ocsp-response"
HEADER_CACHE_BYTES = 8 << 20          # the headers of answers served again, by answer (bytes-bounded)


# seconds: the OCSP latency histogram's buckets (device_ca_ocsp_request_seconds, web/metrics.py)
OCSP_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class OcspTally:
    """This process's OCSP latencies and nonce-budget refusals in plain numbers (the event loop's
    thread adds to them; web/metrics.py moves them into Prometheus metrics)."""

    __slots__ = ("buckets", "seconds", "nonce_refused")

    def __init__(self):
        self.buckets = [0] * (len(OCSP_BUCKETS) + 1)      # per bucket, not cumulative; +Inf last
        self.seconds = 0.0
        self.nonce_refused = 0

    def took(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(OCSP_BUCKETS, seconds)] += 1
        self.seconds += seconds


def _http_date(when) -> str:
    return email.utils.format_datetime(when.astimezone(dt.timezone.utc), usegmt=True)


class StatusApp:
    """Answers /ocsp and /crl/* (``handle``; the listener's front, web/front.py, reads the request
    and sends everything else to the Flask app)."""

    def __init__(self, publisher: StatusPublisher, live_budget: RateLimiter | None = None,
                 crls: dict[str, Callable[[], StoredCrl | None]] | None = None,
                 route: Callable[[bytes], StatusPublisher | None] | None = None,
                 crl_of: Callable[[str], StoredCrl | None] | None = None):
        """``live_budget``: answers signed live for a nonce, per client address (shared by the HTTP
        workers when made before they fork); beyond it a client gets the nonce-less answer.
        ``crls``: the newest CRL of other CAs by name (``root``), besides the publisher's own.
        ``route``: the publisher of the issuer a request's CertIDs name, None for none served here
        (ra/status_routing.py; default: ``publisher`` answers everything). ``crl_of``: the newest
        CRL of any other CA by name (older issuing CA generations)."""
        self.publisher = publisher
        self.crls = {publisher.ca: publisher.latest_crl, **(crls or {})}
        self.route = route or (lambda request_der: publisher)
        self.crl_of = crl_of
        self.live_budget = live_budget
        self._headers = BoundedCache(HEADER_CACHE_BYTES)   # id(answer) -> (answer, headers)
        self.tally = OcspTally()

    def handle(self, method: str, path: str, raw_path: str, body: bytes, remote: str):
        """(status, headers, body) for /ocsp and /crl/*, None for anything else. ``raw_path``: the
        path as sent (undecoded, so %2F inside a GET request's base64 survives), ``body``: the
        whole request body, ``remote``: the client address (the nonce budget's key)."""
        try:
            if path == "/ocsp" or path.startswith("/ocsp/"):
                started = time.perf_counter()
                reply = self._ocsp(method, path, raw_path, body, remote)
                self.tally.took(time.perf_counter() - started)
                return reply
            if path.startswith("/crl/") and path.endswith(".crl"):
                return self._crl(path[len("/crl/"):-len(".crl")], method)
        except Exception:   # noqa: BLE001 - one answer per protocol, never a stack trace
            log.exception("%s %s failed", method, path)
            if path.startswith("/ocsp"):
                return self._send(self.publisher.unsigned("internalError"))
            data = b"CRL temporarily unavailable\n"
            return 503, (("Content-Type", "text/plain"), ("Retry-After", "30"), ("Content-Length", str(len(data)))), \
                data
        return None

    def _ocsp(self, method, path, raw_path, body, remote):
        if method == "POST" and path == "/ocsp":
            if not 0 < len(body) <= ocsp.MAX_REQUEST_BYTES:
                return self._send(self.publisher.unsigned("malformedRequest"))
            answer = self._respond(body, remote)
        elif method == "GET" and path.startswith("/ocsp/"):
            raw = raw_path.split("?", 1)[0]
            segment = raw[raw.index("/ocsp/") + len("/ocsp/"):] if "/ocsp/" in raw else ""
            try:
                request_der = ocsp.parse_get_path(segment)
            except ocsp.MalformedRequest:
                return self._send(self.publisher.unsigned("malformedRequest"))
            answer = self._respond(request_der, remote)
        else:
            return 405, (("Allow", "GET, POST"), ("Content-Type", "text/plain"), ("Content-Length", "19")), \
                b"method not allowed\n"
        return self._send(answer)

    def _respond(self, request_der: bytes, remote: str) -> OcspAnswer:
        try:
            publisher = self.route(request_der)
        except DeviceCAError as exc:           # the issuers could not be read: tryLater, not internalError
            log.error("OCSP: %s", exc.detail)
            return self.publisher.unsigned(ocsp.status_for_error(exc))
        if publisher is None:                  # no issuer served here (RFC 6960 §2.3)
            return self.publisher.unsigned("unauthorized")
        return publisher.respond(request_der, self._live_allowed(remote))

    def _live_allowed(self, remote: str):
        budget = self.live_budget
        if budget is None or budget.rate <= 0:
            return None
        tally = self.tally

        def allowed() -> bool:
            if budget.check(remote) == 0:
                return True
            tally.nonce_refused += 1
            return False
        return allowed

    def _send(self, answer: OcspAnswer):
        known = self._headers.get(id(answer))
        if known is None or known[0] is not answer:
            known = (answer, _headers(answer))
            if answer.cacheable:                 # the same answer object is served many times
                self._headers.put(id(answer), known, len(answer.der) + 256)   # it keeps the answer alive
        return 200, known[1], answer.der

    def _crl(self, name, method):
        if method not in ("GET", "HEAD"):
            return 405, (("Allow", "GET"), ("Content-Length", "0")), b""
        source = self.crls.get(name)
        if source is not None:
            latest = source()
        else:
            latest = self.crl_of(name) if self.crl_of is not None and _plain_name(name) else None
        if latest is None:
            data = b"no such CRL\n"
            return 404, (("Content-Type", "text/plain"), ("Content-Length", str(len(data)))), data
        max_age = max(0, int((latest.next_update - latest.this_update).total_seconds()) // 2)
        return 200, (
            ("Content-Type", "application/pkix-crl"), ("Content-Length", str(len(latest.der))),
            ("Last-Modified", _http_date(latest.this_update)), ("Expires", _http_date(latest.next_update)),
            ("ETag", f'"crl-{latest.number}"'), ("Cache-Control", f"max-age={max_age}, public, no-transform")), \
            b"" if method == "HEAD" else latest.der


def _plain_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "-_" for c in name)


def _headers(answer: OcspAnswer) -> tuple[tuple[str, str], ...]:
    headers = [("Content-Type", OCSP_RESPONSE), ("Content-Length", str(len(answer.der)))]
    if answer.this_update is not None:
        headers += [("Last-Modified", _http_date(answer.this_update)),
                    ("Expires", _http_date(answer.next_update)),
                    ("ETag", '"' + hashlib.sha256(answer.der).hexdigest() + '"')]
        if answer.cacheable:
            max_age = max(0, int((answer.next_update - answer.this_update).total_seconds()) // 2)
            headers.append(("Cache-Control", f"max-age={max_age}, public, no-transform, must-revalidate"))
        else:
            headers.append(("Cache-Control", "no-store"))
    else:
        headers.append(("Cache-Control", "no-store"))
    return tuple(headers)
