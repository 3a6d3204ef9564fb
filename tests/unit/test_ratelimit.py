"""RateLimiter: token buckets per client, shared by processes forked after it was made."""
from __future__ import annotations

import os

from device_ca.web.ratelimit import RateLimiter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_per_client():
    clock = Clock()
    limiter = RateLimiter(2.0, clock=clock)                      # burst 4
    assert [limiter.check("10.0.0.1") for _ in range(4)] == [0.0] * 4
    assert limiter.check("10.0.0.1") == 0.5                     # one token is half a second away
    assert limiter.check("10.0.0.2") == 0.0                     # another client has its own bucket
    clock.now += 0.5
    assert limiter.check("10.0.0.1") == 0.0
    assert limiter.check("10.0.0.1") > 0
    clock.now += 60
    assert [limiter.check("10.0.0.1") for _ in range(5)].count(0.0) == 4     # refilled to the burst, no more


def test_rate_zero_is_off():
    limiter = RateLimiter(0)
    assert all(limiter.check("10.0.0.1") == 0.0 for _ in range(100))


def test_clients_sharing_a_slot_do_not_share_a_bucket():
    clock = Clock()
    limiter = RateLimiter(1.0, clock=clock, slots=1)             # every client on the same slot
    assert [limiter.check("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.check("a") > 0
    assert limiter.check("b") == 0.0                            # takes the slot over with a full bucket


def test_buckets_are_shared_with_forked_workers():
    clock = Clock()
    limiter = RateLimiter(1.0, clock=clock)                      # burst 2
    child = os.fork()
    if child == 0:                                              # a worker spends the client's burst
        ok = [limiter.check("10.0.0.9") for _ in range(2)] == [0.0, 0.0]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert limiter.check("10.0.0.9") > 0                       # ... and this process sees it spent
    assert limiter.check("10.0.0.8") == 0.0
