"""Bulk issuance for a manufacturing line: a batch of devices, one certificate each at most,
resumable after a crash at any point.

Each item of a batch goes pending -> reserved -> issued (or failed, with its reason). A chunk of
items is reserved in one transaction (serials, the items' dates, one intent audit event each)
before anything is signed, and recorded in one transaction after (certificates, devices, audit,
outbox). A run that dies in between leaves reserved items: the next run rebuilds each one's
TBSCertificate from the same CSR, serial and dates, and signs it only if its digest equals the
reserved one, so a device never gets a second certificate in the same batch and every serial the
token may have signed is recorded. Output files are written after the recording transaction, and
a rerun rewrites any that are missing.

Signing runs in worker processes (forked, each opens its own PKCS#11 session); the parent only
reads inputs, opens the batch, hands out chunks and writes the manifest. The policy's template
is linted in full by pkilint once per certificate shape (TemplateLinter), every certificate is
checked in process against it.
"""
from __future__ import annotations

import collections
import csv
import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
import multiprocessing
import os
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

from device_ca.ca import csr as csrs
from device_ca.ca.csr import CsrInfo, key_type_of
from device_ca.ca.clock import Clock
from device_ca.errors import DeviceCAError, Kind
from device_ca.files import atomic_writer, write_atomically
from device_ca.policy import Policy
from device_ca.policy import checks as policies_
from device_ca.ra.issuance import Order, Pipeline, check_method, count, decide, issued_messages, replacing
from device_ca.runtime import quiet_gc
from device_ca.store import Store
from device_ca.store.batches import Batch, BatchRepo, NewItem
from device_ca.store.records import AuditEvent, CertificateRecord

log = logging.getLogger("device_ca.ra.bulk")

CHUNK = 200
MAX_INPUT_BYTES = 64 * 1024            # one CSR
_ITEM_ERRORS = (Kind.MALFORMED, Kind.POLICY_REJECTED, Kind.FORBIDDEN)
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True, slots=True)
class BulkInput:
    """One line of a batch: a device and its CSR (None when the CA generates the key)."""
    device_id: str
    csr: bytes | None
    error: str | None = None           # the input itself is unusable (unreadable file, bad line)


@dataclass(frozen=True)
class ItemResult:
    device_id: str
    state: str                         # issued | failed
    serial: str | None = None
    fingerprint: str | None = None
    not_after: dt.datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class Summary:
    batch_id: str
    created: bool
    issued: int                        # by this run
    already: int                       # issued by an earlier run
    failed: int
    total: int
    seconds: float
    manifest: Path
    secret: str | None = None          # keygen batches, first run only: shown once, stored nowhere

    @property
    def rate(self) -> float:
        return self.issued / self.seconds if self.seconds > 0 else 0.0


# -- inputs ------------------------------------------------------------------------------------

class Source:
    """Batch items that can be gone through more than once without all being held in memory:
    ``read`` is called for each pass."""

    def __init__(self, read: Callable[[], Iterable[BulkInput]]):
        self._read = read

    def __iter__(self) -> Iterator[BulkInput]:
        return iter(self._read())


def csr_dir_source(directory: Path, policy, id_from: str = "filename") -> Source:
    return Source(lambda: _csr_files(directory, policy, id_from))


def file_source(file, read: Callable[[Iterable[str]], Iterable[BulkInput]]) -> Iterable[BulkInput]:
    """``read`` over an open text file, rewound for each pass; a pipe is read into memory once."""
    if not file.seekable():
        return list(read(file))

    def again() -> Iterable[BulkInput]:
        file.seek(0)
        return read(file)
    return Source(again)


def _csr_files(directory: Path, policy, id_from: str) -> Iterator[BulkInput]:
    """One CSR per file (PEM or DER, *.csr / *.pem / *.der); the device id is the file name without
    its extension, or the CSR subject's device-id attribute (``id_from="subject"``)."""
    for path in sorted(p for p in Path(directory).iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.stat().st_size > MAX_INPUT_BYTES:
            yield BulkInput(path.stem, None, f"{path.name}: larger than {MAX_INPUT_BYTES} bytes")
            continue
        data = path.read_bytes()
        if id_from == "subject":
            try:
                device_id = policies_.device_id_from_subject(policy, csrs.load(data).subject)
            except DeviceCAError as exc:
                yield BulkInput(path.stem, None, f"{path.name}: {exc.detail}")
                continue
            if device_id is None:
                yield BulkInput(path.stem, None, f"{path.name}: no device id in the CSR subject")
                continue
        else:
            device_id = path.stem
        yield BulkInput(device_id, data)


def read_jsonl(lines: Iterable[str]) -> list[BulkInput]:
    return list(iter_jsonl(lines))


def iter_jsonl(lines: Iterable[str]) -> Iterator[BulkInput]:
    """``{"device_id": ..., "csr": base64 DER or PEM}`` per line; blank lines are skipped."""
    import base64
    import binascii

    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            device_id, csr = item["device_id"], item["csr"]
            if not isinstance(device_id, str) or not isinstance(csr, str):
                raise TypeError("device_id and csr must be strings")
        except (ValueError, KeyError, TypeError) as exc:
            yield BulkInput(f"line-{number}", None, f"line {number}: not a batch item ({exc})")
            continue
        data = csr.encode() if csr.lstrip().startswith("-----BEGIN") else None
        if data is None:
            try:
                data = base64.b64decode(csr, validate=True)
            except (binascii.Error, ValueError):
                yield BulkInput(device_id, None, f"line {number}: csr is not base64")
                continue
        yield BulkInput(device_id, data)


def iter_device_ids(lines: Iterable[str]) -> Iterator[BulkInput]:
    """One device id per line, for batches whose keys the CA generates."""
    return (BulkInput(line.strip(), None) for line in lines if line.strip() and not line.startswith("#"))


def batch_id_for(policy: str, inputs: Iterable[BulkInput], keygen: bool, replace: bool = False) -> str:
    """The same input gives the same id, so rerunning the same command resumes the same batch."""
    return _id_from_digest(input_digest(policy, inputs, keygen, replace))


def input_digest(policy: str, inputs: Iterable[BulkInput], keygen: bool, replace: bool = False) -> str:
    return _scan(policy, inputs, keygen, replace).digest


def _id_from_digest(digest: str) -> str:
    return "b-" + digest[:24]


@dataclass(frozen=True)
class _Scan:
    """What one pass over the input tells before anything is stored."""
    digest: str
    total: int
    unique: int
    duplicates: list[str]


def _checked(item: BulkInput) -> BulkInput:
    if not _SAFE_NAME.fullmatch(item.device_id) or item.device_id.startswith("."):
        # it names output files: refused before anything is written
        return BulkInput(item.device_id[:128], None,
                         "device id is not 1-128 letters, digits, '.', '_' or '-' (not starting with '.')")
    return item


def _scan(policy: str, inputs: Iterable[BulkInput], keygen: bool, replace: bool = False) -> _Scan:
    # a replacing batch is another batch than the same input without replacement (and the digest of
    # a batch without it is what it always was, so such batches resume across versions)
    h = hashlib.sha256(f"{policy}\0{int(keygen)}\0{'replace' + chr(0) if replace else ''}".encode())
    total = 0

    def hashed() -> Iterator[BulkInput]:
        nonlocal total
        for item in inputs:
            h.update(item.device_id.encode() + b"\0" + hashlib.sha256(item.csr or b"").digest())
            total += 1
            yield item

    duplicates: list[str] = []
    unique = sum(1 for _ in _unique(hashed(), duplicates))
    return _Scan(h.hexdigest(), total, unique, duplicates)


def _unique(inputs: Iterable[BulkInput], duplicates: list[str] | None = None) -> Iterator[NewItem]:
    """The batch's items in input order, the first of each device id, numbered; the ids seen again
    go to ``duplicates``."""
    seen: set[str] = set()
    for item in inputs:
        item = _checked(item)
        if item.device_id in seen:
            if duplicates is not None:
                duplicates.append(item.device_id)
        else:
            seen.add(item.device_id)
            yield NewItem(item.device_id, len(seen) - 1, item.csr, item.error)


# -- the run -------------------------------------------------------------------------------------

class BulkIssuance:
    """One run of a batch (first or resumed). ``progress(done, total)`` is called after each chunk.

    ``inputs`` is gone through twice, and only twice: once here to identify the batch, once more
    when the batch is new (or was opened before items kept their CSRs) to store its items. The run
    itself reads the items from the database a page at a time, so memory does not grow with the
    batch; a list, or a re-readable ``Source`` (``csr_dir_source``, ``file_source``), will do."""

    def __init__(self, store: Store, clock: Clock, policy: Policy, signing: Callable[[], Signing],
                 inputs: Iterable[BulkInput], out_dir: Path, *, actor: str, batch_id: str | None = None,
                 keygen: bool = False, replace: bool = False, secret: str | None = None,
                 workers: int | None = None, stored: Batch | None = None,
                 before_fork: Callable[[], None] = lambda: None,
                 progress: Callable[[int, int], None] | None = None):
        """``signing`` builds what a process issues with (called in each worker after the fork, or
        once here); ``before_fork`` readies the parent for forking (lint preloaded, connections closed).
        ``stored``: a batch opened earlier whose items are all in the database (a queued API batch);
        ``inputs`` are then not read."""
        check_method(policy, "bulk")
        self.store = store
        self.clock = clock
        self.policy = policy
        self.signing = signing
        self.before_fork = before_fork
        self.inputs = inputs
        if stored is not None:
            batch_id, keygen, replace = stored.id, stored.keygen, stored.replaces
            self.scan = _Scan(stored.input_sha256, stored.items, stored.items, [])
        else:
            self.scan = _scan(self.policy.name, inputs, keygen, replace)
        self.replace = replace
        self._opened: tuple[Batch, bool] | None = None
        if not self.scan.total:
            raise DeviceCAError(Kind.MALFORMED, "the batch is empty")
        self.out_dir = Path(out_dir)
        self.actor = actor
        self.keygen = keygen
        self.secret = secret
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.progress = progress or (lambda done, total: None)
        self.batch_id = batch_id or _id_from_digest(self.scan.digest)
        if not _SAFE_NAME.fullmatch(self.batch_id) or self.batch_id.startswith("."):
            # it names a directory and the archive's members: never '.', '..' or hidden
            raise DeviceCAError(Kind.MALFORMED, "a batch id is 1-128 letters, digits, '.', '_' or '-', not "
                                "starting with '.'")

    def open(self, state: str = "open") -> tuple[Batch, bool]:
        """Store the batch with its items in ``state`` (``queued``: an API batch a runner will
        take), or find it stored already; (batch, created). ``run`` opens it if this has not."""
        if self._opened is None:
            store = self.store
            self._secret_pair = self._secret(store.batches.get(self.batch_id))
            secret = self._secret_pair[0]
            now = self.clock.now()
            batch = Batch(id=self.batch_id, policy=self.policy.name, input_sha256=self.scan.digest,
                          items=self.scan.unique, keygen=self.keygen,
                          secret_sha256=_secret_digest(secret, self.batch_id) if secret else None, state=state,
                          created_at=now, created_by=self.actor, finished_at=None, replaces=self.replace)
            batch, created = store.batches.open(
                batch, lambda: _unique(self.inputs),
                AuditEvent(action="batch.opened", actor=self.actor, at=now,
                           details={"batch": self.batch_id, "policy": self.policy.name, "items": self.scan.unique,
                                    "keygen": self.keygen, "replace": self.replace}))
            if not created and not self.keygen and store.batches.counts(batch.id, without_csr=True):
                store.batches.fill_csrs(batch.id, _unique(self.inputs))
            self._opened = (batch, created)
        return self._opened

    def run(self) -> Summary:
        started = time.monotonic()
        store, clock = self.store, self.clock
        batch, created = self.open()
        secret, created_secret = self._secret_pair
        self.out_dir.mkdir(parents=True, exist_ok=True)
        counts = store.batches.counts(batch.id)
        issued = self._issue(secret, counts["pending"] + counts["reserved"])
        manifest, counts_after = self._write_outputs(batch.id, self.scan.duplicates)
        if not counts_after["pending"] and not counts_after["reserved"]:
            store.batches.finish(batch.id, clock.now(), AuditEvent(
                action="batch.finished", actor=self.actor, at=clock.now(),
                details={"batch": batch.id, "issued": counts_after["issued"], "failed": counts_after["failed"],
                         "duplicates": len(self.scan.duplicates)}))
        return Summary(batch_id=batch.id, created=created, issued=issued, already=counts["issued"],
                       failed=counts_after["failed"] + len(self.scan.duplicates),
                       total=self.scan.total, seconds=time.monotonic() - started, manifest=manifest,
                       secret=secret if created_secret else None)

    def _secret(self, existing: Batch | None) -> tuple[str | None, bool]:
        if not self.keygen:
            return None, False
        if existing is None:
            return (self.secret or secrets.token_urlsafe(24)), self.secret is None
        if self.secret is None:
            raise DeviceCAError(Kind.UNAUTHORIZED, f"batch {existing.id} exists: give its secret (--secret-file) "
                                "to resume it")
        if not hmac.compare_digest(existing.secret_sha256 or "", _secret_digest(self.secret, existing.id)):
            raise DeviceCAError(Kind.UNAUTHORIZED, f"that is not the secret of batch {existing.id}")
        return self.secret, False

    def _issue(self, secret: str | None, total: int) -> int:
        """Sign what is still to do, in chunks handed to the workers as they are read."""
        done, issued = 0, 0
        if not total:
            return 0
        jobs = (Job(batch_id=self.batch_id, policy=self.policy, actor=self.actor, out_dir=str(self.out_dir),
                    secret=secret, items=page[start:start + CHUNK], replace=self.replace)
                for page in self.store.batches.to_do(self.batch_id, size=5 * CHUNK)
                for start in range(0, len(page), CHUNK))
        self.progress(0, total)
        workers = min(self.workers, -(-total // CHUNK))
        if workers == 1:                    # in this process: no global state (the batch API runs batches in threads)
            signing = self.signing()
            results = (Chunk(signing, job).run() for job in jobs)
            pool = None
        else:
            pool = self._pool(workers)
            results = _in_order(pool, jobs, window=2 * workers)
        try:
            for chunk in results:
                done += len(chunk)
                issued += sum(1 for r in chunk if r.state == "issued")
                self.progress(done, total)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        return issued

    def _pool(self, workers: int):
        """Forked workers (a spawned one would spend ~2 s importing): the parent readies itself first
        (``before_fork``: this policy's shapes linted, database connections closed), so each worker
        starts with pkilint's validators and the clean shapes and opens its own database
        connections and PKCS#11 session (the parent never opened one)."""
        global _FACTORY
        self.before_fork()
        quiet_gc()
        _FACTORY = self.signing              # inherited by the forked workers
        return multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker)

    def _write_outputs(self, batch_id: str, duplicates: list[str]) -> tuple[Path, Counter]:
        """Files an earlier run recorded but did not write, and the manifest of the whole batch, a
        page of items at a time (memory does not grow with the batch); the items' states counted."""
        store = self.store
        counts: Counter = Counter()
        manifest = self.out_dir / "manifest.csv"
        with atomic_writer(manifest, text=True) as f:
            writer = csv.writer(f)
            writer.writerow(["device_id", "serial", "fingerprint_sha256", "not_after", "status", "error"])
            for page, issued in store.batches.pages_with_certificates(batch_id):
                for item in page:
                    counts[item.state] += 1
                    record = issued.get(item.serial) if item.state == "issued" else None
                    if record is not None and not self.keygen:
                        path = self.out_dir / f"{item.device_id}.pem"
                        if not path.exists():
                            write_atomically(path, certificate_pem(record))
                    writer.writerow([item.device_id, item.serial or "", record.fingerprint if record else "",
                                     record.not_after.strftime("%Y-%m-%dT%H:%M:%SZ") if record else "",
                                     item.state, item.error or ""])
            writer.writerows([d, "", "", "", "failed", "device id appears more than once in the input"]
                             for d in duplicates)
        return manifest, counts


def _in_order(pool, jobs: Iterable["Job"], window: int) -> Iterator[list[ItemResult]]:
    """Each job's results, with at most ``window`` jobs handed out and not yet answered (jobs
    are read from the database as they are handed out)."""
    waiting: collections.deque = collections.deque()
    for job in jobs:
        waiting.append(pool.apply_async(_run_job, (job,)))
        if len(waiting) >= window:
            yield waiting.popleft().get()
    while waiting:
        yield waiting.popleft().get()


@dataclass(frozen=True)
class Job:
    batch_id: str
    actor: str
    out_dir: str
    secret: str | None
    items: list[tuple[str, bytes | None, str, str | None, dt.datetime | None, dt.datetime | None]]
    policy: Policy
    replace: bool = False              # items of devices with a current certificate replace it


# -- in the worker processes ---------------------------------------------------------------------

@dataclass(frozen=True)
class Signing:
    """What a process that issues a batch's chunks uses, built in that process (after the fork) by
    the composition root: its own database connections and its own PKCS#11 session."""
    pipeline: Pipeline
    batches: BatchRepo
    current: Callable[[str, list[str]], dict[str, str]]     # Store.current_certificates


_FACTORY: Callable[[], Signing] | None = None
_SIGNING: Signing | None = None


def _init_worker() -> None:
    global _SIGNING
    _SIGNING = _FACTORY()


def _run_job(job: Job) -> list[ItemResult]:
    return Chunk(_SIGNING, job).run()


class Chunk:
    """One chunk of a batch through the issuance pipeline: items refused by the policy fail with
    their reason, the others are reserved, signed and recorded as one group."""

    def __init__(self, signing: Signing, job: Job):
        self.pipeline = signing.pipeline
        self.batches = signing.batches
        self.current = signing.current
        self.job = job
        self.policy = job.policy
        self.out_dir = Path(job.out_dir)

    def run(self) -> list[ItemResult]:
        failures: list[tuple[str, str]] = []
        abandon: list[str] = []
        orders, keys = [], {}
        messages = functools.partial(issued_messages, self.policy)
        current = self.current(self.policy.name, [item[0] for item in self.job.items])
        now = self.pipeline.clock.now()
        for device_id, csr_data, state, serial, not_before, not_after in self.job.items:
            try:
                key, csr = self._key_and_csr(device_id, csr_data)
                request, _ = decide(self.policy, csr, device_id, "bulk")
                links = replacing(self.policy, device_id, current, self.job.replace, now)
            except DeviceCAError as exc:
                if exc.kind not in _ITEM_ERRORS:
                    raise
                count(self.policy.name, "bulk", exc)
                failures.append((device_id, exc.detail))
                if serial:
                    abandon.append(serial)
                continue
            keys[device_id] = key
            orders.append(Order(request, device_id, self.policy.name, "bulk", self.job.actor, messages=messages,
                                batch_id=self.job.batch_id, links=links,
                                resume=(serial, not_before, not_after) if state == "reserved" and serial else None))
        self.batches.fail(self.job.batch_id, failures, abandon)
        try:
            issued, refused = self.pipeline.issue_allowed(orders)
        except Exception as exc:
            count(self.policy.name, "bulk", exc, len(orders))
            raise
        count(self.policy.name, "bulk", n=len(issued))
        for error in refused.values():
            count(self.policy.name, "bulk", error)
        if refused:                                                     # blocked or shared keys
            failures += [(d, e.detail) for d, e in refused.items()]
            self.batches.fail(self.job.batch_id, [(d, e.detail) for d, e in refused.items()],
                              [o.resume[0] for o in orders if o.device_id in refused and o.resume])
        for i in issued:
            key = keys[i.record.device_id]
            if key is None:
                write_atomically(self.out_dir / f"{i.record.device_id}.pem", i.pem)
            else:
                self._write_pkcs12(i.record.device_id, key, i.certificate)
        return [ItemResult(d, "failed", error=e) for d, e in failures] + [
            ItemResult(i.record.device_id, "issued", i.record.serial, i.record.fingerprint, i.record.not_after)
            for i in issued]

    def _key_and_csr(self, device_id: str, csr_data: bytes | None):
        if csr_data is not None:
            return None, csrs.load(csr_data)
        if self.job.secret is None:            # not a key-generating batch: never make a key up
            raise DeviceCAError(Kind.MALFORMED, "no CSR for this item in the input")
        key = self._load_or_generate_key(device_id)
        public_key = key.public_key()
        return key, CsrInfo(der=b"", public_key=public_key, key_type=key_type_of(public_key),
                            subject=policies_.subject_name(self.policy, device_id),
                            sans=policies_.subject_alt_names(self.policy, device_id))

    # -- keys generated here (no key generator on the device) --

    def _key_path(self, device_id: str) -> Path:
        return self.out_dir / f".{device_id}.key.p8"

    def _load_or_generate_key(self, device_id: str):
        """The key of a reserved item survives a crash encrypted with the batch secret; otherwise a new one."""
        from device_ca.ra.enrollment import generate_key

        path = self._key_path(device_id)
        if path.exists():
            try:
                return serialization.load_der_private_key(path.read_bytes(), self.job.secret.encode())
            except ValueError:
                log.warning("batch %s: key file of %s unreadable; generating a new key", self.job.batch_id, device_id)
        key = generate_key(self.policy.key_types[0])
        write_atomically(path, key.private_bytes(Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                 serialization.BestAvailableEncryption(self.job.secret.encode())))
        return key

    def _write_pkcs12(self, device_id: str, key, certificate: x509.Certificate) -> None:
        chain = [self.pipeline.issuer().certificate]
        data = pkcs12.serialize_key_and_certificates(device_id.encode(), key, certificate, chain,
                                                     serialization.BestAvailableEncryption(self.job.secret.encode()))
        write_atomically(self.out_dir / f"{device_id}.p12", data)
        self._key_path(device_id).unlink(missing_ok=True)


def certificate_pem(record: CertificateRecord) -> bytes:
    return x509.load_der_x509_certificate(record.der).public_bytes(Encoding.PEM)


def _secret_digest(secret: str, batch_id: str) -> str:
    """What is stored to recognise the secret when a run is resumed: scrypt, salted with the batch
    id, so that even an operator-chosen secret (--secret-file on the first run) resists guessing."""
    return hashlib.scrypt(secret.encode(), salt=f"device-ca batch {batch_id}".encode(), n=2**14, r=8, p=1,
                          dklen=32).hex()
