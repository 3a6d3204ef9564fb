"""Process-level settings for the long-running processes that fork workers (serve, bulk issue)."""
from __future__ import annotations

import gc
import logging
import threading
from typing import Callable, TypeVar

GC_YOUNG_THRESHOLD = 20_000      # allocations between young collections (Python's default: 700)


def quiet_gc() -> None:
    """Keep the garbage collector off what lives as long as the process (modules, pkilint's
    validators, the app): frozen objects are never traversed again, so a full collection costs
    microseconds instead of ~80 ms (collections took ~4% of an HTTPS worker's CPU under enrollment
    load), and forked workers do not dirty the parent's pages by touching their GC headers. Young
    objects are collected less often too (a request makes a few thousand, nearly all freed by
    reference counting)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


class BoundedCache:
    """A dict bounded in bytes, not entries: each entry is charged ``size`` (its key and value
    bytes plus a fixed overhead for the objects around them) and the whole cache is dropped when
    the next entry would pass ``max_bytes`` (refilled by the requests that follow; cheaper on the
    hot path than keeping an order). Reads take no lock; writes do."""

    OVERHEAD = 256                    # the dict slot, tuple and small objects an entry holds besides its bytes

    def __init__(self, max_bytes: int):
        import threading

        self.max_bytes = max_bytes
        self._data: dict = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key, default=None):
        return self._data.get(key, default)

    def __contains__(self, key) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, key, value, size: int) -> None:
        charge = size + self.OVERHEAD
        if charge > self.max_bytes:
            return
        with self._lock:
            if self._bytes + charge > self.max_bytes:
                self._data.clear()
                self._bytes = 0
            if key not in self._data:
                self._bytes += charge
            self._data[key] = value


W = TypeVar("W")


def start_rounds(name: str, due: Callable[[], bool], build: Callable[[], W], work: Callable[[W], object],
                 interval: float, backoff: float, log: logging.Logger) -> threading.Thread:
    """A daemon thread that calls ``work(worker)`` every ``interval`` seconds while ``due()`` says
    there is something to do; ``worker`` is built by ``build()`` on the first round that finds work.
    An error is logged and the next round waits ``backoff`` seconds (a misconfiguration or an
    outage: no log line every second)."""
    def loop() -> None:
        worker = None
        wait = interval
        while not stop.wait(wait):
            wait = interval
            try:
                if not due():
                    continue
                if worker is None:
                    worker = build()
                work(worker)
            except Exception as exc:  # noqa: BLE001 - keep going; a later round retries
                log.warning("%s: %s", name, exc)
                wait = backoff

    stop = threading.Event()
    thread = threading.Thread(target=loop, name=f"device-ca-{name.replace(' ', '-')}", daemon=True)
    thread.start()
    return thread

