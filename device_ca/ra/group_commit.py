"""Group commit: concurrent issuances in one process share their transactions, the way databases
batch the flushes of concurrent commits.

Each caller queues its part; the first to find no transaction running leads: it takes everything
queued, runs one transaction for all of it, wakes the others, and hands the lead to a caller that
queued meanwhile. No caller waits for a timer: a lone request commits at once, and under load the
requests that arrived during one transaction share the next one. If a shared transaction fails,
each part is run again on its own, so one caller's refusal (a bootstrap token used meanwhile, a
serial drawn twice) never becomes another caller's error and every caller sees exactly the
outcome its own transaction would have had.
"""
from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

Part = TypeVar("Part")


class _Slot(Generic[Part]):
    __slots__ = ("part", "done", "lead", "error")

    def __init__(self, part: Part):
        self.part = part
        self.done: threading.Event | None = None      # made only for a caller that has to wait
        self.lead = False
        self.error: BaseException | None = None


class GroupCommit(Generic[Part]):
    """``commit(parts)`` runs one transaction for a list of parts; ``submit(part)`` returns once the
    part is committed, or raises what its own transaction raised."""

    def __init__(self, commit: Callable[[list[Part]], None]):
        self._commit = commit
        self._lock = threading.Lock()
        self._queue: list[_Slot[Part]] = []
        self._running = False
        self.groups = 0              # transactions run

    def submit(self, part: Part) -> None:
        slot = _Slot(part)
        with self._lock:
            self._queue.append(slot)
            lead = not self._running
            self._running = True
            if not lead:
                slot.done = threading.Event()
        if not lead:
            slot.done.wait()
            if not slot.lead:
                if slot.error is not None:
                    raise slot.error
                return
        self._lead()
        if slot.error is not None:
            raise slot.error

    def _lead(self) -> None:
        with self._lock:
            group, self._queue = self._queue, []
        self.groups += 1
        try:
            self._commit([s.part for s in group])
        except BaseException as exc:                # noqa: BLE001 - each part alone decides its outcome
            if len(group) == 1:
                group[0].error = exc
            else:
                for s in group:
                    try:
                        self._commit([s.part])
                    except BaseException as exc:    # noqa: BLE001 - handed to its caller
                        s.error = exc
        with self._lock:
            successor = self._queue[0] if self._queue else None
            if successor is None:
                self._running = False
        for s in group:
            if s.done is not None:
                s.done.set()
        if successor is not None:
            successor.lead = True
            successor.done.set()

