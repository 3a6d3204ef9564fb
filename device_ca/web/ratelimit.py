"""Per-client token buckets (research L6: globalsign/est uses burst = 2 x rate): on PostgreSQL one
bucket per client for every node (``SharedRateLimiter``, rows in the database); on SQLite, and as
the fallback while the database cannot be reached, one set for the whole listener of a node
(``RateLimiter``).

The buckets live in shared memory that ``device-ca serve`` makes before gunicorn forks its
workers: a client's limit is the server's, not once per worker process (with the buckets in each
worker, four workers let a client through at up to four times ``--rate-limit``). A slot per
client address hash, 65,536 slots (1.5 MiB); a client whose hash lands on a slot that another
holds starts with a full bucket there. Threads of a worker take turns on a lock; workers do not
lock each other out (a worker killed while holding a lock would stop every other one): two
workers updating the same client's bucket in the same microsecond may let one extra request
through, never refuse one wrongly.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import multiprocessing
import threading
import time

from flask import Response, current_app, g, request

from device_ca.errors import DeviceCAError
from device_ca.web.errors import problem, text
from device_ca.web.tls import from_proxy


class RateLimiter:
    """``rate`` requests per second per key with a burst of ``burst``; rate 0 turns it off.
    Make it before the workers fork to share it between them."""

    SLOTS = 1 << 16

    def __init__(self, rate: float, burst: int | None = None, clock=time.monotonic, slots: int = SLOTS):
        self.rate = rate
        self.burst = burst if burst is not None else max(1, int(rate * 2))
        self._clock = clock
        self._slots = slots
        self._owners = multiprocessing.RawArray(ctypes.c_uint64, slots) if rate > 0 else None
        self._buckets = multiprocessing.RawArray(ctypes.c_double, 2 * slots) if rate > 0 else None  # tokens, last
        self._lock = threading.Lock()

    def check(self, key: str) -> float:
        """0 if the request may go ahead, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        owner = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") or 1
        slot = owner % self._slots
        now = self._clock()
        with self._lock:
            if self._owners[slot] != owner:
                self._owners[slot] = owner
                tokens = float(self.burst)
            else:
                tokens = min(float(self.burst),
                             self._buckets[2 * slot] + max(0.0, now - self._buckets[2 * slot + 1]) * self.rate)
            self._buckets[2 * slot + 1] = now
            if tokens >= 1:
                self._buckets[2 * slot] = tokens - 1
                return 0.0
            self._buckets[2 * slot] = tokens
        return (1 - tokens) / self.rate


class SharedRateLimiter:
    """The same limit with one bucket per client across every node: the buckets are rows in the
    database (store/rates.py), taken in one statement per request. While the database cannot be
    reached the node falls back to its own buckets (``fallback``), so the limit still holds per
    node."""

    def __init__(self, rates, fallback: RateLimiter, prefix: str = ""):
        self.rates = rates
        self.fallback = fallback
        self.rate = fallback.rate
        self.burst = fallback.burst
        self.prefix = prefix

    def check(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        hashed = hashlib.blake2b((self.prefix + key).encode(), digest_size=16).hexdigest()
        try:
            return self.rates.take(hashed, self.rate, self.burst)
        except DeviceCAError:
            return self.fallback.check(key)


def client_address() -> str:
    """The client's address: from X-Forwarded-For when the request comes through a trusted proxy
    (so the rate limit applies per device, not to the proxy), else the peer address."""
    remote = request.remote_addr or "-"
    if from_proxy(request.environ, current_app.config["DEVICE_CA_PROXIES"]):
        forwarded = request.headers.get("X-Forwarded-For", "")
        if forwarded:
            return forwarded.split(",")[-1].strip() or remote
    return remote


def limit_client() -> Response | None:
    """``before_request`` of every HTTPS blueprint (EST, the batch and operators' API): one limit per client for
    the whole listener; 429 with Retry-After beyond it (problem details under /api/)."""
    g.client = client_address()
    wait = current_app.config["DEVICE_CA_RATE_LIMITER"].check(g.client)
    if wait:
        from device_ca.web.metrics import RATE_LIMITED

        RATE_LIMITED.labels("est").inc()
        answer = problem if request.path.startswith("/api/") else text
        return answer(429, "too many requests", headers={"Retry-After": str(max(1, math.ceil(wait)))})
    return None
