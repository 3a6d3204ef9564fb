"""The bulk API for remote manufacturing stations (HTTPS, under /api/v1/batches).

A station authenticates with its TLS client certificate: one this CA issued under the
``manufacturing-station`` policy, still good. An operator (ra/operators.py) reads every batch and,
with a role that allows it, submits batches of policies issued in bulk. Anyone else gets 401 (no
or unknown certificate) or 403 (a certificate of another role). A batch is submitted as JSON lines
(``application/x-ndjson``, read line by line as it streams in) or as one JSON document
(``application/json``: ``{"items": [...]}``), and is idempotent on the station's batch id: the same
id with the same input gives the same batch, with other input 409. The batch is issued in the
background (ra/batch_queue.py: a bounded number at once per node, the others queued); the station
polls its status and downloads each certificate or a tar.gz of all.
"""
from __future__ import annotations

import io
import json
import logging
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.bulk import BulkInput, batch_id_for, certificate_pem, input_digest, read_jsonl
from device_ca.ra.issuance import check_method
from device_ca.ra.operators import BATCH_SUBMIT, READ, Operator
from device_ca.ra.operators import GRANT as OPERATOR_GRANT
from device_ca.ra.stations import GRANT, Callers, authorize_batch, authorize_devices
from device_ca.store.batches import Batch
from device_ca.ra.reports import iso
from device_ca.web import paging
from device_ca.web.bodies import body_stream, read_body
from device_ca.web.ratelimit import limit_client
from device_ca.web.tls import client_certificate

log = logging.getLogger("device_ca.web.batches")

bp = Blueprint("batches", __name__, url_prefix="/api/v1/batches")

MAX_BATCH_BYTES = 64 * 1024 * 1024
MAX_LINE_BYTES = 16 * 1024


bp.before_request(limit_client)                      # the EST rate limit, per client, shared


@bp.before_request
def _larger_bodies() -> None:
    request.max_content_length = MAX_BATCH_BYTES          # the app's default is EST's 64 KiB


def _store():
    return current_app.config["DEVICE_CA_STORE"]


@dataclass(frozen=True)
class _Caller:
    """A station (its device id, what its policy authorises, its certificate's serial) or an operator."""
    station: str | None = None
    granted: tuple[str, ...] = ()
    serial: str | None = None
    operator: Operator | None = None

    @property
    def actor(self) -> str:
        return self.operator.actor if self.operator else f"station:{self.station}"


def _caller() -> _Caller:
    certificate = client_certificate(request.environ, current_app.config["DEVICE_CA_PROXIES"])
    if certificate is None:
        raise DeviceCAError(Kind.UNAUTHORIZED, "a manufacturing station's or an operator's client certificate "
                            "is required")
    config = current_app.config
    record, granted = Callers(_store(), config["DEVICE_CA_POLICIES"], config["DEVICE_CA_CLOCK"],
                              config["DEVICE_CA_EST"].is_ours).holder(certificate)
    if OPERATOR_GRANT in granted:
        return _Caller(operator=config["DEVICE_CA_OPERATORS"].authenticate(certificate))
    if GRANT not in granted:
        raise DeviceCAError(Kind.FORBIDDEN, f"certificates of policy {record.policy} do not authorise the batch API")
    return _Caller(record.device_id, granted, record.serial)


def _own(batch_id: str, caller: _Caller) -> Batch:
    """The batch, if this station submitted it or an operator asks: 404 if there is none, 403 if
    another station's."""
    batch = _store().batches.get(batch_id)
    if batch is None:
        raise DeviceCAError(Kind.NOT_FOUND, f"no batch {batch_id}")
    if caller.operator is not None:
        caller.operator.authorize(READ)
    elif batch.created_by != caller.actor:
        raise DeviceCAError(Kind.FORBIDDEN, f"batch {batch_id} belongs to another station")
    return batch


def _out_dir(batch_id: str) -> Path:
    return current_app.config["DEVICE_CA_BATCH_DIR"] / batch_id


def _read_items() -> list[BulkInput]:
    """The submitted items; 413 for a batch over MAX_BATCH_BYTES (refused before it is read when
    its Content-Length says so), 400 for a line over MAX_LINE_BYTES or a body that is no batch."""
    media = (request.mimetype or "").lower()
    if media == "application/x-ndjson":
        stream, total = body_stream(MAX_BATCH_BYTES), 0      # 413 as soon as a chunked body passes the limit
        def lines():
            nonlocal total
            while True:
                line = stream.readline(MAX_LINE_BYTES + 1)
                if not line:
                    return
                total += len(line)
                if total > MAX_BATCH_BYTES:
                    raise RequestEntityTooLarge()
                if len(line) > MAX_LINE_BYTES:
                    raise DeviceCAError(Kind.MALFORMED, f"batch line longer than {MAX_LINE_BYTES} bytes")
                yield line.decode("utf-8", "replace")
        return read_jsonl(lines())
    if media == "application/json":
        body = read_body(MAX_BATCH_BYTES)
        try:
            items = json.loads(body)["items"]
            if not isinstance(items, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise DeviceCAError(Kind.MALFORMED, 'a JSON batch is {"items": [{"device_id": ..., "csr": ...}, ...]}') \
                from None
        return read_jsonl(json.dumps(item) for item in items)
    raise DeviceCAError(Kind.MALFORMED, "Content-Type must be application/x-ndjson or application/json")


@bp.get("")
def batches() -> Response:
    """Every batch, oldest first, a page at a time: for operators."""
    caller = _caller()
    if caller.operator is None:
        raise DeviceCAError(Kind.FORBIDDEN, "only operators list batches")
    caller.operator.authorize(READ)
    limit = paging.limit()
    rows = _store().batches.batches(limit=limit + 1, after=paging.cursor())
    return paging.page(rows, limit, lambda b: paging.time_key(b.created_at, b.id), lambda b: {
        "batch": b.id, "policy": b.policy, "state": b.state, "items": b.items, "created_at": iso(b.created_at),
        "created_by": b.created_by, "finished_at": iso(b.finished_at)})


@bp.post("")
def submit() -> Response:
    caller = _caller()
    policy = request.args.get("policy", "")
    asked = request.args.get("replace", "false").lower()
    if asked not in ("true", "false"):
        raise DeviceCAError(Kind.MALFORMED, "replace is true or false")
    replace = asked == "true"
    if caller.operator is not None:              # as `device-ca bulk issue [--replace]` on the CA host
        caller.operator.authorize(BATCH_SUBMIT)
        check_method(current_app.config["DEVICE_CA_POLICIES"].get(policy), "bulk")
        scope = None
    else:
        scope = _store().station_scope(caller.serial)
        authorize_batch(caller.serial, caller.granted, scope, current_app.config["DEVICE_CA_POLICIES"].get(policy),
                        replace)
    items = _read_items()
    if scope is not None:
        authorize_devices(scope, (i.device_id for i in items if i.error is None))
    batch_id = request.args.get("batch_id") or batch_id_for(policy, items, False, replace)
    run = current_app.config["DEVICE_CA_BULK"](policy, items, _out_dir(batch_id), actor=caller.actor,
                                               batch_id=batch_id, workers=1, replace=replace)
    existing = _store().batches.get(batch_id)
    if existing is not None:
        _own(batch_id, caller)
        if existing.policy != policy or existing.input_sha256 != input_digest(policy, items, False, replace):
            raise DeviceCAError(Kind.CONFLICT, f"batch {batch_id} exists with another policy or other input")
    batch, created = run.open(state="queued")         # stored before the answer; a runner issues it
    current_app.config["DEVICE_CA_BATCH_QUEUE"].submit(batch)
    response = jsonify(_status(batch_id))
    response.status_code = 202 if created else 200
    response.headers["Location"] = url_for("batches.status", batch_id=batch_id)
    return response


def _status(batch_id: str) -> dict:
    """Counts from the database; the failed items read a page at a time."""
    store = _store()
    batch = store.batches.get(batch_id)
    found = store.batches.counts(batch_id)
    counts = {s: found[s] for s in ("issued", "failed", "pending", "reserved")}
    failures = [{"device_id": i.device_id, "error": i.error}
                for page in store.batches.failed(batch_id) for i in page]
    return {"batch": batch.id, "policy": batch.policy, "state": batch.state, "items": sum(found.values()),
            **counts, "failures": failures}


@bp.get("/<batch_id>")
def status(batch_id: str) -> Response:
    _own(batch_id, _caller())
    return jsonify(_status(batch_id))


@bp.get("/<batch_id>/items/<device_id>.pem")
def item(batch_id: str, device_id: str) -> Response:
    _own(batch_id, _caller())
    store = _store()
    found = store.batches.item(batch_id, device_id)
    if found is None or found.state != "issued":
        raise DeviceCAError(Kind.NOT_FOUND, f"no issued certificate for {device_id} in batch {batch_id}")
    record = store.batches.certificates([found.serial])[found.serial]
    return Response(certificate_pem(record), mimetype="application/x-pem-file")


@bp.get("/<batch_id>/archive")
def archive(batch_id: str) -> Response:
    """Every issued certificate of the batch (<device>.pem) and manifest.json (issued and failed
    items in input order), as tar.gz streamed a page of items at a time. The manifest collects in a
    temporary file and is added last; its compressed form (~60 bytes an item) is all that is held
    in memory at once at the end."""
    _own(batch_id, _caller())
    store = _store()

    def generate():
        out = _Chunks()
        with tempfile.SpooledTemporaryFile(max_size=1 << 20) as manifest, \
                tarfile.open(fileobj=out, mode="w|gz") as tar:
            def add(name: str, data, size: int) -> None:
                info = tarfile.TarInfo(f"{batch_id}/{name}")
                info.size = size
                tar.addfile(info, data)

            separator = b"[\n"
            for page, records in store.batches.pages_with_certificates(batch_id):
                for i in page:
                    if i.state == "issued":
                        record = records[i.serial]
                        pem = certificate_pem(record)
                        add(f"{i.device_id}.pem", io.BytesIO(pem), len(pem))
                        entry = {"device_id": i.device_id, "serial": i.serial,
                                 "fingerprint_sha256": record.fingerprint,
                                 "not_after": record.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), "status": "issued"}
                    elif i.state == "failed":
                        entry = {"device_id": i.device_id, "status": "failed", "error": i.error}
                    else:
                        continue
                    manifest.write(separator + json.dumps(entry).encode())
                    separator = b",\n"
                tar.members.clear()          # TarFile lists every member written; a stream needs none back
                yield from out.take()
            manifest.write(b"[]\n" if separator == b"[\n" else b"\n]\n")
            size = manifest.tell()
            manifest.seek(0)
            add("manifest.json", manifest, size)
        yield from out.take()

    return Response(generate(), mimetype="application/gzip",
                    headers={"Content-Disposition": f'attachment; filename="{batch_id}.tar.gz"'})


class _Chunks(io.RawIOBase):
    """Where the streaming tar.gz writes (in pieces of at most 10 KiB); ``take`` hands over the
    pieces written since."""

    def __init__(self):
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> list[bytes]:
        parts, self._parts = self._parts, []
        return parts

