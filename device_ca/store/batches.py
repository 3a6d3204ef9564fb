"""Bulk batches: each item goes pending -> reserved (serial and dates fixed, committed before
signing) -> issued, or failed with its reason. Items are reserved and recorded by the issuance
transactions (store/issuance.py), a chunk of items in each; this repository opens batches, hands
out the items still to do and reads batches back a page at a time."""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from device_ca.errors import DeviceCAError, Kind
from device_ca.store import audit
from device_ca.store.db import Database, after_key
from device_ca.store.records import AuditEvent, CertificateRecord, utc
from device_ca.store.issuance_sql import ABANDON, CERTIFICATES
from device_ca.store.tables import BatchItemRow, BatchRow

_BATCHES = BatchRow.__table__
_ITEMS = BatchItemRow.__table__

_INSERT_ITEM = sa.insert(_ITEMS)
_TO_DO = (sa.select(_ITEMS.c.device_id, _ITEMS.c.position, _ITEMS.c.csr, _ITEMS.c.state, _ITEMS.c.serial,
                    _ITEMS.c.not_before, _ITEMS.c.not_after)
          .where(_ITEMS.c.batch_id == sa.bindparam("b_batch"), _ITEMS.c.position > sa.bindparam("b_after"),
                 sa.or_(_ITEMS.c.state == "pending", _ITEMS.c.state == "reserved"))
          .order_by(_ITEMS.c.position).limit(sa.bindparam("b_size")))
_FILL_CSR = (sa.update(_ITEMS)
             .where(_ITEMS.c.batch_id == sa.bindparam("b_batch"), _ITEMS.c.device_id == sa.bindparam("b_device"),
                    _ITEMS.c.csr.is_(None), sa.or_(_ITEMS.c.state == "pending", _ITEMS.c.state == "reserved"))
             .values(csr=sa.bindparam("b_csr")))
_COUNTS = (sa.select(_ITEMS.c.state, sa.func.count()).where(_ITEMS.c.batch_id == sa.bindparam("b_batch"))
           .group_by(_ITEMS.c.state))
_COUNTS_WITHOUT_CSR = _COUNTS.where(_ITEMS.c.csr.is_(None),
                                    sa.or_(_ITEMS.c.state == "pending", _ITEMS.c.state == "reserved"))
_PAGE = (sa.select(_ITEMS.c.device_id, _ITEMS.c.position, _ITEMS.c.csr_sha256, _ITEMS.c.state, _ITEMS.c.serial,
                   _ITEMS.c.not_before, _ITEMS.c.not_after, _ITEMS.c.error)
         .where(_ITEMS.c.batch_id == sa.bindparam("b_batch"), _ITEMS.c.position > sa.bindparam("b_after"))
         .order_by(_ITEMS.c.position).limit(sa.bindparam("b_size")))
_FAILED = _PAGE.where(_ITEMS.c.state == "failed")
_ONE = (sa.select(*_PAGE.selected_columns)
        .where(_ITEMS.c.batch_id == sa.bindparam("b_batch"), _ITEMS.c.device_id == sa.bindparam("b_device")))
_ITEM_FAILED = (sa.update(_ITEMS)
                .where(_ITEMS.c.batch_id == sa.bindparam("b_batch"), _ITEMS.c.device_id == sa.bindparam("b_device"),
                       sa.or_(_ITEMS.c.state == "pending", _ITEMS.c.state == "reserved"))
                .values(state="failed", error=sa.bindparam("b_error"), serial=None))



@dataclass(frozen=True)
class Batch:
    id: str
    policy: str
    input_sha256: str
    items: int
    keygen: bool
    secret_sha256: str | None
    state: str
    created_at: dt.datetime
    created_by: str
    finished_at: dt.datetime | None
    replaces: bool = False


@dataclass(frozen=True, slots=True)
class BatchItem:
    device_id: str
    position: int
    csr_sha256: str | None
    state: str                      # pending | reserved | issued | failed
    serial: str | None
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    error: str | None


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item of a batch being opened: its input CSR (None when the CA makes the key), or why the
    input itself is unusable (the item is stored as failed with that reason)."""
    device_id: str
    position: int
    csr: bytes | None
    error: str | None = None


class BatchRepo:
    def __init__(self, db: Database):
        self.db = db

    def open(self, batch: Batch, items: Callable[[], Iterable[NewItem]], event: AuditEvent) -> tuple[Batch, bool]:
        """Create the batch with its items (``items()`` is called only then; inserted a thousand at
        a time in the one transaction), or return the existing one if it has this id and the same
        input; (batch, created)."""
        existing = self.get(batch.id)
        if existing is None:
            try:
                with self.db.transaction() as c:
                    c.execute(sa.insert(_BATCHES).values(**batch.__dict__))
                    rows = ({"batch_id": batch.id, "device_id": i.device_id, "position": i.position,
                             "csr_sha256": hashlib.sha256(i.csr).hexdigest() if i.csr else None, "csr": i.csr,
                             "state": "failed" if i.error else "pending", "error": i.error and i.error[:500]}
                            for i in items())
                    while chunk := list(itertools.islice(rows, 1000)):
                        c.execute(_INSERT_ITEM, chunk)
                    audit.append(c, event)
                return batch, True
            except IntegrityError:
                existing = self.get(batch.id)       # a concurrent run created it
                if existing is None:
                    raise
        if existing.policy != batch.policy or existing.input_sha256 != batch.input_sha256 \
                or existing.keygen != batch.keygen:
            raise DeviceCAError(Kind.CONFLICT, f"batch {batch.id} exists with another policy or other input; "
                                "use another --batch-id")
        return existing, False

    def get(self, batch_id: str) -> Batch | None:
        with self.db.reading() as c:
            row = c.execute(sa.select(_BATCHES).where(_BATCHES.c.id == batch_id)).mappings().first()
        if row is None:
            return None
        return Batch(**{**row, "created_at": utc(row["created_at"]), "finished_at": utc(row["finished_at"])})

    def batches(self, *, limit: int | None = None, after: tuple[dt.datetime, str] | None = None) -> list[Batch]:
        """Oldest first; ``after``: only those after (created_at, id), a page's last."""
        with self.db.reading() as c:
            ids = c.execute(sa.select(_BATCHES.c.id).where(after_key(_BATCHES.c.created_at, _BATCHES.c.id, after))
                            .order_by(_BATCHES.c.created_at, _BATCHES.c.id).limit(limit)).scalars().all()
        return [self.get(i) for i in ids]

    def recent(self, limit: int = 50) -> list[tuple[Batch, Counter]]:
        """The newest ``limit`` batches, newest first, each with its items by state (pending,
        reserved, issued, failed): the console's batch list with progress, in two queries."""
        with self.db.reading() as c:
            rows = c.execute(sa.select(_BATCHES).order_by(_BATCHES.c.created_at.desc(), _BATCHES.c.id)
                             .limit(limit)).mappings().all()
            counts: dict[str, Counter] = {row["id"]: Counter() for row in rows}
            if rows:
                for batch_id, state, count in c.execute(
                        sa.select(_ITEMS.c.batch_id, _ITEMS.c.state, sa.func.count())
                        .where(_ITEMS.c.batch_id.in_(list(counts))).group_by(_ITEMS.c.batch_id, _ITEMS.c.state)):
                    counts[batch_id][state] = count
        return [(Batch(**{**row, "created_at": utc(row["created_at"]), "finished_at": utc(row["finished_at"])}),
                 counts[row["id"]]) for row in rows]

    def item(self, batch_id: str, device_id: str) -> BatchItem | None:
        with self.db.reading() as c:
            row = c.execute(_ONE, {"b_batch": batch_id, "b_device": device_id}).first()
        return None if row is None else _item(row)

    def pages(self, batch_id: str, size: int = 1000) -> Iterator[list[BatchItem]]:
        """The batch's items in position order, ``size`` at a time (one short read each), so a
        caller going through a batch of any size holds one page."""
        return self._paged(_PAGE, batch_id, size, _item)

    def failed(self, batch_id: str, size: int = 1000) -> Iterator[list[BatchItem]]:
        """``pages`` of the failed items only."""
        return self._paged(_FAILED, batch_id, size, _item)

    def pages_with_certificates(self, batch_id: str, size: int = 1000) \
            -> Iterator[tuple[list[BatchItem], dict[str, CertificateRecord]]]:
        """``pages`` with the certificates of each page's issued items, by serial."""
        for page in self.pages(batch_id, size):
            yield page, self.certificates([i.serial for i in page if i.state == "issued"])

    def to_do(self, batch_id: str, size: int = 1000) -> Iterator[list[tuple]]:
        """Pending and reserved items with their CSRs, in position order, ``size`` at a time:
        (device id, CSR, state, serial, notBefore, notAfter)."""
        return self._paged(_TO_DO, batch_id, size, lambda r: (r[0], None if r[2] is None else bytes(r[2]), r[3],
                                                              r[4], utc(r[5]), utc(r[6])))

    def _paged(self, statement, batch_id: str, size: int, make: Callable) -> Iterator[list]:
        """Keyset pages of ``statement`` (its second column is the position it is ordered by)."""
        after = -1
        while True:
            with self.db.reading() as c:
                rows = c.execute(statement, {"b_batch": batch_id, "b_after": after, "b_size": size}).all()
            if not rows:
                return
            yield [make(r) for r in rows]
            after = rows[-1][1]

    def fill_csrs(self, batch_id: str, items: Iterable[NewItem]) -> None:
        """Put the input's CSRs into items still to do that have none (batches opened before items
        kept their CSR)."""
        rows = ({"b_batch": batch_id, "b_device": i.device_id, "b_csr": i.csr} for i in items if i.csr)
        while chunk := list(itertools.islice(rows, 1000)):
            with self.db.direct() as c:
                c.execute(_FILL_CSR, chunk)

    def counts(self, batch_id: str, without_csr: bool = False) -> Counter:
        """Items by state (``without_csr``: only those to do that have no CSR)."""
        with self.db.reading() as c:
            return Counter(dict(c.execute(_COUNTS_WITHOUT_CSR if without_csr else _COUNTS,
                                          {"b_batch": batch_id}).all()))

    def certificates(self, serials: list[str]) -> dict[str, CertificateRecord]:
        """The issued certificates of a batch's items, by serial (for the manifest and missing files)."""
        out: dict[str, CertificateRecord] = {}
        with self.db.reading() as c:
            for start in range(0, len(serials), 500):
                chunk = serials[start:start + 500]
                for r in c.execute(sa.select(CERTIFICATES).where(CERTIFICATES.c.serial.in_(chunk))).mappings():
                    out[r["serial"]] = CertificateRecord(
                        serial=r["serial"], issuer=r["issuer"], device_id=r["device_id"], policy=r["policy"],
                        subject=r["subject"], status=r["status"], not_before=utc(r["not_before"]),
                        not_after=utc(r["not_after"]), fingerprint=r["fingerprint"], der=bytes(r["der"]),
                        issued_at=utc(r["issued_at"]), superseded_by=r["superseded_by"], spki_sha256=r["spki_sha256"])
        return out

    def fail(self, batch_id: str, failures: list[tuple[str, str]], abandon: list[str] = ()) -> None:
        """Items refused for a reason of their own (bad CSR, policy); the batch goes on."""
        if not failures:
            return
        with self.db.direct() as c:
            if abandon:
                c.execute(ABANDON, [{"b_serial": s} for s in abandon])
            c.execute(_ITEM_FAILED, [{"b_batch": batch_id, "b_device": d, "b_error": e[:500]} for d, e in failures])

    # -- the queue of API batches: queued -> running (claimed by one runner) -> done ------------

    def claim_queued(self) -> Batch | None:
        """The oldest queued batch, now running; None if none is queued (a concurrent claimer
        that wins a batch makes this one try the next)."""
        for _ in range(10):
            with self.db.reading() as c:
                batch_id = c.execute(sa.select(_BATCHES.c.id).where(_BATCHES.c.state == "queued")
                                     .order_by(_BATCHES.c.created_at, _BATCHES.c.id).limit(1)).scalar()
            if batch_id is None:
                return None
            if self.move(batch_id, ("queued",), "running"):
                return self.get(batch_id)
        return None

    def move(self, batch_id: str, from_states: tuple[str, ...], to: str) -> bool:
        """Change the batch's state if it is in one of ``from_states``; whether it was."""
        with self.db.transaction() as c:
            done = c.execute(sa.update(_BATCHES).where(_BATCHES.c.id == batch_id, _BATCHES.c.state.in_(from_states))
                             .values(state=to))
        return done.rowcount == 1

    def in_state(self, state: str) -> list[str]:
        with self.db.reading() as c:
            return list(c.execute(sa.select(_BATCHES.c.id).where(_BATCHES.c.state == state)).scalars())

    def finish(self, batch_id: str, at: dt.datetime, event: AuditEvent) -> None:
        with self.db.transaction() as c:
            c.execute(sa.update(_BATCHES).where(_BATCHES.c.id == batch_id).values(state="done", finished_at=at))
            audit.append(c, event)


def _item(row) -> BatchItem:
    return BatchItem(row[0], row[1], row[2], row[3], row[4], utc(row[5]), utc(row[6]), row[7])
