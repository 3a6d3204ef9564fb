"""Group commit (ra/group_commit.py): concurrent parts share transactions, and a failing part fails alone."""
from __future__ import annotations

import threading

import pytest

from device_ca.ra.group_commit import GroupCommit


class Ledger:
    """A stand-in transaction: all parts of a call are kept, or none if one of them is bad."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[list[str]] = []
        self.kept: list[str] = []
        self.gate = gate
        self.lock = threading.Lock()

    def commit(self, parts: list[str]) -> None:
        with self.lock:
            self.calls.append(list(parts))
            first = len(self.calls) == 1
        if first and self.gate is not None:
            self.gate.wait(5)                    # the first transaction is slow: others queue meanwhile
        if any(p.startswith("bad") for p in parts):
            raise ValueError(f"refused: {[p for p in parts if p.startswith('bad')]}")
        with self.lock:
            self.kept.extend(parts)


def _submit_all(group: GroupCommit, parts: list[str], release: threading.Event | None = None):
    errors: dict[str, BaseException] = {}

    def one(part: str) -> None:
        try:
            group.submit(part)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            errors[part] = exc

    threads = [threading.Thread(target=one, args=(p,)) for p in parts]
    threads[0].start()
    while not group._running:                    # the first part leads and is inside its transaction
        pass
    for t in threads[1:]:
        t.start()
    while len(group._queue) < len(parts) - 1:    # everyone else has queued behind it
        pass
    if release is not None:
        release.set()
    for t in threads:
        t.join(10)
    return errors


def test_a_lone_part_commits_at_once():
    ledger = Ledger()
    GroupCommit(ledger.commit).submit("a")
    assert ledger.calls == [["a"]] and ledger.kept == ["a"]


def test_parts_that_queue_during_a_transaction_share_the_next():
    release = threading.Event()
    ledger = Ledger(release)
    group = GroupCommit(ledger.commit)
    parts = [f"p{i}" for i in range(8)]
    assert _submit_all(group, parts, release) == {}
    assert sorted(ledger.kept) == sorted(parts)                 # each part committed exactly once
    assert len(ledger.calls) == 2 and sorted(ledger.calls[1]) == sorted(parts[1:]) == sorted(ledger.kept[1:])
    assert group.groups == 2 and not group._running


def test_a_refused_part_fails_alone():
    release = threading.Event()
    ledger = Ledger(release)
    group = GroupCommit(ledger.commit)
    parts = ["p0", "p1", "bad-2", "p3"]
    errors = _submit_all(group, parts, release)
    assert list(errors) == ["bad-2"] and isinstance(errors["bad-2"], ValueError)
    assert sorted(ledger.kept) == ["p0", "p1", "p3"]            # the others kept, once each
    assert ["bad-2"] in ledger.calls                            # retried on its own before it was refused


def test_the_leaders_own_error_reaches_it():
    group = GroupCommit(Ledger().commit)
    with pytest.raises(ValueError, match="bad-1"):
        group.submit("bad-1")
    group.submit("p2")                                          # the lead is free again
