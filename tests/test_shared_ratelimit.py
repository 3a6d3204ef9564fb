"""Rate-limit buckets in the database under test (store/rates.py) and SharedRateLimiter: one bucket
per client whichever process (node) takes from it, refilled by the database's clock, and the
node's own buckets while the database cannot be reached."""
from __future__ import annotations

import multiprocessing
import time

from device_ca.store import Store
from device_ca.store.db import Database
from device_ca.store.rates import RateRepo
from device_ca.web.ratelimit import RateLimiter, SharedRateLimiter


def test_a_bucket_gives_its_burst_then_refuses_with_the_wait_then_refills(store):
    assert [store.rates.take("client-a", 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = store.rates.take("client-a", 2.0, 3)
    assert 0 < wait <= 0.5                                       # one token at 2/s: at most half a second
    assert store.rates.take("client-b", 2.0, 3) == 0.0           # another client, another bucket
    time.sleep(0.6)
    assert store.rates.take("client-a", 2.0, 3) == 0.0
    assert store.rates.take("client-a", 2.0, 3) > 0


def test_a_refused_request_takes_nothing(store):
    for _ in range(2):
        store.rates.take("client", 1.0, 2)
    waits = [store.rates.take("client", 1.0, 2) for _ in range(20)]      # hammering does not dig deeper
    assert all(0 < w <= 1.0 for w in waits)
    time.sleep(1.05)
    assert store.rates.take("client", 1.0, 2) == 0.0


def test_idle_buckets_are_forgotten(store):
    store.rates.take("old", 1.0, 2)
    assert store.rates.forget_idle(idle=3600) == 0
    time.sleep(0.05)
    assert store.rates.forget_idle(idle=0.01) == 1
    assert store.rates.take("old", 1.0, 2) == 0.0 and store.rates.take("old", 1.0, 2) == 0.0


def _node(url: str, start, results) -> None:
    store = Store(url, migrate_schema=False)
    limiter = SharedRateLimiter(store.rates, RateLimiter(1.0, burst=10))
    start.wait()
    results.put(sum(1 for _ in range(10) if limiter.check("10.0.0.7") == 0.0))
    store.db.dispose()


def test_processes_share_one_bucket_per_client(database_url):
    """Three processes, each with its own connections (as nodes are), take 10 each from one client's
    bucket of 10: 10 pass in all, where per-node buckets would pass 30."""
    Store(database_url).db.dispose()
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(3), context.Queue()
    nodes = [context.Process(target=_node, args=(database_url, start, results)) for _ in range(3)]
    for p in nodes:
        p.start()
    for p in nodes:
        p.join(60)
    passed = [results.get(timeout=5) for _ in nodes]
    assert sum(passed) in (10, 11), passed                      # 1/s refill: one more if the run took > 1 s


def test_the_nodes_own_buckets_while_the_database_cannot_be_reached():
    unreachable = RateRepo(Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"))
    limiter = SharedRateLimiter(unreachable, RateLimiter(1.0, burst=2))
    assert [limiter.check("10.0.0.9") for _ in range(2)] == [0.0, 0.0]
    assert limiter.check("10.0.0.9") > 0                        # still limited, by the node's own bucket
