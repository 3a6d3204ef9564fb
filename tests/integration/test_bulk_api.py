"""/api/v1/batches over real mutual TLS (curl) against `device-ca serve`: a station certificate
issued with the CLI submits, polls and downloads; the same batch id twice is one batch; a device
certificate or no certificate is refused."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import tarfile
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from helpers import make_csr
from integration.cli_harness import new_ca_env, openssl_csr
from integration.server_harness import policy_dir_with

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_database_url, module_serve):
    tmp = tmp_path_factory.mktemp("bulk-api")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    station = openssl_csr(tmp, "station-line-3", "/O=BuildingCo/OU=manufacturing-station/CN=station-line-3")
    env.run("issue", "--policy", "manufacturing-station", "--csr", str(station), "--out", str(tmp / "station-line-3.pem"),
            "--allow-policy", "env-sensor", "--allow-policy", "door-lock")
    device = openssl_csr(tmp, "lock-5", "/O=BuildingCo/OU=door-lock/CN=lock-5")
    env.run("issue", "--policy", "door-lock", "--csr", str(device), "--out", str(tmp / "lock-5.pem"))
    policies = policy_dir_with(tmp, {"guarded-sensor": 'subject = "CN={device_id},OU=guarded-sensor,O=BuildingCo"\n'
                                                       'enrollment = ["bulk"]\nrequire_approval = true\n'})
    return env, module_serve(env, "--rate-limit", "0", policy_dir=policies), tmp


def _batch(devices) -> bytes:
    return b"".join(json.dumps({"device_id": d, "csr": base64.b64encode(
        make_csr(d, ou="env-sensor", encoding=Encoding.DER)).decode()}).encode() + b"\n" for d in devices)


def _as(tmp, who):
    return ["--cert", str(tmp / f"{who}.pem"), "--key", str(tmp / f"{who}.key")]


def _api(server, path, *args, body=None):
    base = server.est.replace("/.well-known/est", "")
    out = server.env.home / f"api-{time.monotonic_ns()}"
    cmd = ["curl", "-s", "-o", str(out), "-w", "%{http_code}", "--cacert", str(server.chain), "--max-time", "60",
           *args, f"{base}{path}"]
    if body is not None:
        cmd[1:1] = ["--data-binary", "@-"]
    proc = subprocess.run(cmd, input=body, capture_output=True, timeout=90)
    return int(proc.stdout or b"0"), out.read_bytes() if out.exists() else b""


def _wait_done(server, tmp, batch_id):
    return _wait_done_as(server, tmp, batch_id, "station-line-3")


def _wait_done_as(server, tmp, batch_id, station):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, body = _api(server, f"/api/v1/batches/{batch_id}", *_as(tmp, station))
        assert status == 200, body
        state = json.loads(body)
        if state["state"] == "done":
            return state
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} not done: {state}")


def test_station_submits_polls_and_downloads(served):
    env, server, tmp = served
    devices = [f"env-c{i:03x}" for i in range(40)]
    body = _batch(devices) + json.dumps({"device_id": "env-cfff", "csr": "bm90IGEgQ1NS"}).encode() + b"\n"
    status, answer = _api(server, "/api/v1/batches?policy=env-sensor&batch_id=line3-001", *_as(tmp, "station-line-3"),
                          "-H", "Content-Type: application/x-ndjson", body=body)
    assert status == 202, answer
    state = _wait_done(server, tmp, "line3-001")
    assert (state["issued"], state["failed"]) == (40, 1) and state["failures"][0]["device_id"] == "env-cfff"
    status, pem = _api(server, f"/api/v1/batches/line3-001/items/{devices[5]}.pem", *_as(tmp, "station-line-3"))
    assert status == 200
    assert x509.load_pem_x509_certificate(pem).subject.rfc4514_string() == f"CN={devices[5]},OU=env-sensor,O=BuildingCo"
    status, archive = _api(server, "/api/v1/batches/line3-001/archive", *_as(tmp, "station-line-3"))
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("line3-001/manifest.json"))
    assert {f"line3-001/{d}.pem" for d in devices} <= names and len(manifest) == 41
    assert [m["device_id"] for m in manifest] == devices + ["env-cfff"]          # input order
    assert manifest[-1]["status"] == "failed" and manifest[-1]["error"]
    assert manifest[5]["serial"] == format(x509.load_pem_x509_certificate(pem).serial_number, "036x")
    for missing in ("env-cfff", "env-nobody"):                                     # failed, not in the batch
        assert _api(server, f"/api/v1/batches/line3-001/items/{missing}.pem", *_as(tmp, "station-line-3"))[0] == 404
    assert _api(server, "/api/v1/batches/line3-999/archive", *_as(tmp, "station-line-3"))[0] == 404

    # the same batch id again: the same batch, nothing issued twice
    status, again = _api(server, "/api/v1/batches?policy=env-sensor&batch_id=line3-001",
                         *_as(tmp, "station-line-3"), "-H", "Content-Type: application/x-ndjson", body=body)
    assert status == 200 and json.loads(again)["issued"] == 40
    assert len(json.loads(env.run("list", "--policy", "env-sensor", "--json").stdout)) == 40
    # ... and with other input: refused
    status, other = _api(server, "/api/v1/batches?policy=env-sensor&batch_id=line3-001",
                         *_as(tmp, "station-line-3"), "-H", "Content-Type: application/x-ndjson",
                         body=_batch(["env-d001"]))
    assert status == 409, other


def test_only_stations_may_use_the_api(served):
    env, server, tmp = served
    args = ("-H", "Content-Type: application/x-ndjson")
    status, _ = _api(server, "/api/v1/batches?policy=env-sensor", *args, body=_batch(["env-e001"]))
    assert status == 401                                      # no client certificate
    status, _ = _api(server, "/api/v1/batches?policy=env-sensor", *_as(tmp, "lock-5"), *args,
                     body=_batch(["env-e001"]))
    assert status == 403                                      # a device, not a station
    status, _ = _api(server, "/api/v1/batches/line3-001", *_as(tmp, "lock-5"))
    assert status == 403
    assert not any(c["device_id"] == "env-e001"
                   for c in json.loads(env.run("list", "--policy", "env-sensor", "--json").stdout))
    status, _ = _api(server, "/api/v1/batches?policy=env-sensor", *_as(tmp, "station-line-3"),
                     "-H", "Content-Type: text/plain", body=b"x")
    assert status == 400


def test_a_station_cannot_mint_stations_or_issue_policies_not_meant_for_bulk(served):
    """Attack (issue 14, items 1 and 3): a station asks for a station certificate, which would be an
    identity of its own on this API, or for a policy that does not list "bulk": 403 on the whole
    batch, nothing stored, no signature."""
    env, server, tmp = served
    station = (*_as(tmp, "station-line-3"), "-H", "Content-Type: application/x-ndjson")
    stations_before = json.loads(env.run("list", "--policy", "manufacturing-station", "--json").stdout)
    minted = json.dumps({"device_id": "station-evil", "csr": base64.b64encode(make_csr(
        "station-evil", ou="manufacturing-station", encoding=Encoding.DER)).decode()}).encode() + b"\n"
    status, answer = _api(server, "/api/v1/batches?policy=manufacturing-station&batch_id=mint", *station, body=minted)
    assert status == 403 and b"only an operator issues them" in answer, answer
    badge = json.dumps({"device_id": "br-77", "csr": base64.b64encode(make_csr(
        "br-77", ou="badge-reader", encoding=Encoding.DER)).decode()}).encode() + b"\n"
    status, answer = _api(server, "/api/v1/batches?policy=badge-reader&batch_id=badges", *station, body=badge)
    assert status == 403 and b"does not allow enrollment by bulk" in answer, answer
    assert json.loads(env.run("list", "--policy", "manufacturing-station", "--json").stdout) == stations_before
    assert json.loads(env.run("list", "--device-id", "br-77", "--json").stdout) == []
    for batch_id in ("mint", "badges"):
        status, _ = _api(server, f"/api/v1/batches/{batch_id}", *_as(tmp, "station-line-3"))
        assert status == 404                                  # no batch was opened
    assert env.run("bulk", "issue", "--policy", "manufacturing-station", "--jsonl", "-", "--out",
                   str(tmp / "mint-cli"), input=minted, check=False).returncode == 7   # nor through the CLI


def test_approval_is_never_skipped_in_bulk(served):
    """Attack (issue 14, item 4): a policy that requires an operator's approval of each enrollment is
    asked for in a batch: 403 on the whole batch, nothing stored."""
    env, server, tmp = served
    guarded = json.dumps({"device_id": "gs-1", "csr": base64.b64encode(make_csr(
        "gs-1", ou="guarded-sensor", encoding=Encoding.DER)).decode()}).encode() + b"\n"
    status, answer = _api(server, "/api/v1/batches?policy=guarded-sensor&batch_id=guarded", *_as(tmp, "station-line-3"),
                          "-H", "Content-Type: application/x-ndjson", body=guarded)
    assert status == 403 and b"requires an operator's approval" in answer, answer
    assert json.loads(env.run("list", "--device-id", "gs-1", "--json").stdout) == []
    assert _api(server, "/api/v1/batches/guarded", *_as(tmp, "station-line-3"))[0] == 404


def test_the_batch_api_shares_the_rate_limit(tmp_path, database_url, serve):
    """Attack (issue 14, item 6, the rate limit): a station hammering the batch API gets 429 with
    Retry-After from the EST limiter, per client address."""
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    csr = openssl_csr(tmp_path, "station-line-9", "/O=BuildingCo/OU=manufacturing-station/CN=station-line-9")
    env.run("issue", "--policy", "manufacturing-station", "--csr", str(csr), "--out",
            str(tmp_path / "station-line-9.pem"), "--allow-policy", "env-sensor")
    server = serve(env, "--rate-limit", "1")
    statuses = [_api(server, "/api/v1/batches/nothing", *_as(tmp_path, "station-line-9"))[0] for _ in range(6)]
    assert statuses[0] == 404 and 429 in statuses, statuses


def test_a_station_cannot_take_over_an_enrolled_device(served):
    """Attack (issue 14, item 2): a station submits a CSR of its own for a device that already holds a
    good certificate: that item fails with a clear reason and the device keeps its one certificate;
    asking to replace needs a station whose policy authorises batch-replace (403 here, nothing
    stored). An operator replaces with `bulk issue --replace`: the old certificate is superseded."""
    env, server, tmp = served
    station = (*_as(tmp, "station-line-3"), "-H", "Content-Type: application/x-ndjson")
    take_over = b"".join(json.dumps({"device_id": d, "csr": base64.b64encode(make_csr(
        d, ou="door-lock", encoding=Encoding.DER)).decode()}).encode() + b"\n" for d in ("lock-5", "lock-6"))
    status, answer = _api(server, "/api/v1/batches?policy=door-lock&batch_id=take-over", *station, body=take_over)
    assert status == 202, answer
    state = _wait_done(server, tmp, "take-over")
    assert (state["issued"], state["failed"]) == (1, 1)
    assert state["failures"] == [{"device_id": "lock-5", "error": state["failures"][0]["error"]}]
    assert "already has a valid certificate" in state["failures"][0]["error"]
    lock5 = json.loads(env.run("list", "--device-id", "lock-5", "--json").stdout)
    assert [c["status"] for c in lock5] == ["good"]
    status, answer = _api(server, "/api/v1/batches?policy=door-lock&batch_id=take-over-2&replace=true", *station,
                          body=take_over)
    assert status == 403 and b"batch-replace" in answer, answer
    status, _ = _api(server, "/api/v1/batches/take-over-2", *_as(tmp, "station-line-3"))
    assert status == 404
    assert json.loads(env.run("list", "--device-id", "lock-5", "--json").stdout) == lock5

    replaced = json.loads(env.run("bulk", "issue", "--policy", "door-lock", "--jsonl", "-", "--out",
                                  str(tmp / "replace"), "--replace", "--json",
                                  input=take_over.splitlines()[0] + b"\n").stdout)
    assert (replaced["issued"], replaced["failed"]) == (1, 0)
    shown = json.loads(env.run("show", lock5[0]["serial"], "--json").stdout)
    assert shown["superseded_by"] and shown["status"] == "good"     # revoked after door-lock's grace


def test_a_station_sees_only_its_own_batches_and_batch_ids_are_plain_names(served):
    """Attack (issue 14, item 5): another station reads, downloads or resubmits line 3's batch (403);
    batch ids '.', '..' and hidden ones are refused (400) with nothing stored; every member of an
    archive is a plain name under the batch's directory."""
    env, server, tmp = served
    csr = openssl_csr(tmp, "station-line-4", "/O=BuildingCo/OU=manufacturing-station/CN=station-line-4")
    env.run("issue", "--policy", "manufacturing-station", "--csr", str(csr), "--out", str(tmp / "station-line-4.pem"),
            "--allow-policy", "env-sensor")
    own = (*_as(tmp, "station-line-3"), "-H", "Content-Type: application/x-ndjson")
    status, answer = _api(server, "/api/v1/batches?policy=env-sensor&batch_id=line3-private", *own,
                          body=_batch(["env-a101", "env-a102"]))
    assert status == 202, answer
    _wait_done(server, tmp, "line3-private")
    other = _as(tmp, "station-line-4")
    for path in ("/api/v1/batches/line3-private", "/api/v1/batches/line3-private/items/env-a101.pem",
                 "/api/v1/batches/line3-private/archive"):
        status, answer = _api(server, path, *other)
        assert status == 403 and b"another station" in answer, (path, status, answer)
    status, answer = _api(server, "/api/v1/batches?policy=env-sensor&batch_id=line3-private", *other,
                          "-H", "Content-Type: application/x-ndjson", body=_batch(["env-a101", "env-a102"]))
    assert status == 403, answer
    for batch_id in (".", "..", ".hidden"):
        status, answer = _api(server, f"/api/v1/batches?policy=env-sensor&batch_id={batch_id}", *own,
                              body=_batch(["env-a103"]))
        assert status == 400 and b"not starting with '.'" in answer, (batch_id, status, answer)
    assert json.loads(env.run("list", "--device-id", "env-a103", "--json").stdout) == []
    assert not (env.home / "batches" / "env-a103.pem").exists() and not (env.home / "env-a103.pem").exists()
    status, archive = _api(server, "/api/v1/batches/line3-private/archive", *_as(tmp, "station-line-3"))
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = tar.getnames()
    assert sorted(names) == ["line3-private/env-a101.pem", "line3-private/env-a102.pem", "line3-private/manifest.json"]


def test_json_batches_and_refused_bodies(served):
    """A batch as one JSON document; bodies that are too large or no batch are refused with
    nothing recorded (a declared size over the limit before the body is read)."""
    env, server, tmp = served
    station = (*_as(tmp, "station-line-3"),)
    items = [json.loads(line) for line in _batch([f"env-f{i:03x}" for i in range(3)]).splitlines()]
    status, answer = _api(server, "/api/v1/batches?policy=env-sensor&batch_id=line3-json", *station,
                          "-H", "Content-Type: application/json", body=json.dumps({"items": items}).encode())
    assert status == 202, answer
    assert _wait_done(server, tmp, "line3-json")["issued"] == 3

    def batches() -> int:
        return len(env.run("bulk", "list").stdout.splitlines())

    before = batches()
    refused = {
        "JSON without items": ("application/json", json.dumps({"devices": items}).encode(), 400),
        "a line over 16 KiB": ("application/x-ndjson",
                               json.dumps({"device_id": "env-f100", "csr": "A" * 17000}).encode() + b"\n", 400),
        "declared 70 MB": ("application/x-ndjson", _batch(["env-f101"]), 413),
        # issue 15, item 4: no Content-Length, 65 MiB of lines: 413, not a batch cut at 64 MiB
        "chunked 65 MiB": ("application/x-ndjson", _batch(["env-f102"]) + (json.dumps(
            {"device_id": "env-f103", "csr": "A" * 16000}).encode() + b"\n") * (65 * 1024 * 1024 // 16000), 413),
    }
    for case, (media, body, expected) in refused.items():
        extra = {"declared 70 MB": ("-H", "Content-Length: 70000000"),
                 "chunked 65 MiB": ("-H", "Transfer-Encoding: chunked")}.get(case, ())
        status, answer = _api(server, "/api/v1/batches?policy=env-sensor", *station, "-H", f"Content-Type: {media}",
                              *extra, body=body)
        assert status == expected, (case, status, answer)
        if expected == 413:
            assert answer == f"request body larger than {64 * 1024 * 1024} bytes\n".encode()
    assert batches() == before
    devices = {c["device_id"] for c in json.loads(env.run("list", "--policy", "env-sensor", "--json").stdout)}
    assert not devices & {"env-f100", "env-f101", "env-f102"}


def _count(env, *args) -> int:
    return len(json.loads(env.run("list", *args, "--json").stdout))


def test_a_station_issues_only_within_the_scope_its_operator_gave_it(served, module_database_url):
    """Attack (issue 14, item 3): a station scoped to env-sensor devices env-5... asks for another
    policy, for a device outside its pattern (one item among good ones), or holds a certificate
    issued without a scope: 403 on the whole batch with the reason, no batch, no certificate.
    The scope is recorded with the station certificate and shown by `device-ca show`."""
    env, server, tmp = served
    csr = openssl_csr(tmp, "station-line-5", "/O=BuildingCo/OU=manufacturing-station/CN=station-line-5")
    env.run("issue", "--policy", "manufacturing-station", "--csr", str(csr), "--out", str(tmp / "station-line-5.pem"),
            "--allow-policy", "env-sensor", "--allow-devices", "env-5[0-9a-f]+")
    serial = format(x509.load_pem_x509_certificate((tmp / "station-line-5.pem").read_bytes()).serial_number, "036x")
    shown = json.loads(env.run("show", serial, "--json").stdout)
    assert shown["scope"] == {"policies": ["env-sensor"], "devices": "env-5[0-9a-f]+"}
    assert "policies env-sensor; devices env-5[0-9a-f]+" in env.run("show", serial).stdout.decode()

    station = (*_as(tmp, "station-line-5"), "-H", "Content-Type: application/x-ndjson")
    locks = b"".join(json.dumps({"device_id": d, "csr": base64.b64encode(make_csr(
        d, ou="door-lock", encoding=Encoding.DER)).decode()}).encode() + b"\n" for d in ("lock-51",))
    before = _count(env)
    status, answer = _api(server, "/api/v1/batches?policy=door-lock&batch_id=l5-locks", *station, body=locks)
    assert status == 403 and b"may issue env-sensor only, not door-lock" in answer, answer
    status, answer = _api(server, "/api/v1/batches?policy=env-sensor&batch_id=l5-out", *station,
                          body=_batch(["env-5a01", "env-6a02", "env-5a03"]))
    assert status == 403 and b"'env-6a02' is outside this station's scope" in answer, answer
    for batch_id in ("l5-locks", "l5-out"):
        assert _api(server, f"/api/v1/batches/{batch_id}", *_as(tmp, "station-line-5"))[0] == 404
    assert _count(env) == before

    status, answer = _api(server, "/api/v1/batches?policy=env-sensor&batch_id=l5-in", *station,
                          body=_batch(["env-5a01", "env-5a03"]))
    assert status == 202, answer
    state = _wait_done_as(server, tmp, "l5-in", "station-line-5")
    assert (state["issued"], state["failed"]) == (2, 0)

    # a station certificate from before scopes existed (no scope row) authorises no batch
    import sqlalchemy as sa
    engine = sa.create_engine(module_database_url)
    with engine.begin() as c:
        c.execute(sa.text("DELETE FROM station_scopes WHERE serial = :s"), {"s": serial})
    engine.dispose()
    before = _count(env)
    status, answer = _api(server, "/api/v1/batches?policy=env-sensor&batch_id=l5-unscoped", *station,
                          body=_batch(["env-5a05"]))
    assert status == 403 and b"issued without a scope" in answer, answer
    assert _count(env) == before


def test_station_certificates_are_issued_with_a_valid_scope(served):
    """An operator's station certificate without a scope, with a policy that is not issued in bulk,
    with a pattern that is no regular expression, or a scope given to a device certificate: refused
    with the reason, nothing issued."""
    env, _, tmp = served
    csr = openssl_csr(tmp, "station-line-7", "/O=BuildingCo/OU=manufacturing-station/CN=station-line-7")
    device = openssl_csr(tmp, "env-7001", "/O=BuildingCo/OU=env-sensor/CN=env-7001")
    base = ("issue", "--policy", "manufacturing-station", "--csr", str(csr))
    refused = {
        "no scope": (base, b"is issued with its scope"),
        "not a bulk policy": ((*base, "--allow-policy", "badge-reader"), b"does not allow enrollment by bulk"),
        "a station policy": ((*base, "--allow-policy", "manufacturing-station"), b"only an operator issues them"),
        "unknown policy": ((*base, "--allow-policy", "no-such-policy"), b"no-such-policy"),
        "bad pattern": ((*base, "--allow-policy", "env-sensor", "--allow-devices", "env-[0-9"),
                        b"is not a regular expression"),
        "repetition too large": ((*base, "--allow-policy", "env-sensor", "--allow-devices", "a{99999999999}"),
                                 b"is not a regular expression"),
        "scope on a device": (("issue", "--policy", "env-sensor", "--csr", str(device), "--allow-policy", "env-sensor"),
                              b"scope station certificates"),
    }
    before = _count(env)
    for case, (args, reason) in refused.items():
        proc = env.run(*args, check=False)
        assert proc.returncode != 0 and reason in proc.stderr, (case, proc.returncode, proc.stderr)
    assert _count(env) == before


def test_batches_beyond_the_node_limit_wait_queued(tmp_path, database_url, serve):
    """Attack (issue 14, item 6): a station submits batch after batch. With `--max-batches 1` the
    node issues one batch at a time, whichever worker process received it: the others wait in
    state `queued` (never two batches part-issued at the same moment), and all of them finish."""
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    csr = openssl_csr(tmp_path, "station-line-8", "/O=BuildingCo/OU=manufacturing-station/CN=station-line-8")
    env.run("issue", "--policy", "manufacturing-station", "--csr", str(csr), "--out",
            str(tmp_path / "station-line-8.pem"), "--allow-policy", "env-sensor")
    server = serve(env, "--rate-limit", "0", "--max-batches", "1", "--workers", "2")
    station = (*_as(tmp_path, "station-line-8"), "-H", "Content-Type: application/x-ndjson")
    names = [f"q{n}" for n in range(3)]
    bodies = {name: _batch([f"env-{n}{i:03x}" for i in range(250)]) for n, name in enumerate(names, 7)}
    for name in names:
        status, answer = _api(server, f"/api/v1/batches?policy=env-sensor&batch_id={name}", *station, body=bodies[name])
        assert status == 202, answer
    import sqlalchemy as sa
    snapshot = sa.text("SELECT b.id, b.state, SUM(CASE WHEN i.state IN ('issued', 'failed') THEN 1 ELSE 0 END), "
                       "COUNT(*) FROM batches b JOIN batch_items i ON i.batch_id = b.id GROUP BY b.id, b.state")
    engine = sa.create_engine(database_url)
    seen_queued, deadline = False, time.monotonic() + 180
    try:
        while time.monotonic() < deadline:           # one statement: a consistent view of all three batches
            with engine.connect() as c:
                rows = c.execute(snapshot).all()
            running = [r for r in rows if r[1] == "running"]
            part_done = [r for r in rows if 0 < r[2] < r[3]]
            assert len(running) <= 1 and len(part_done) <= 1, rows
            seen_queued |= any(r[1] == "queued" for r in rows)
            if len(rows) == 3 and all(r[1] == "done" for r in rows):
                break
            time.sleep(0.05)
    finally:
        engine.dispose()
    states = {}
    for name in names:
        status, body = _api(server, f"/api/v1/batches/{name}", *_as(tmp_path, "station-line-8"))
        assert status == 200, body
        states[name] = json.loads(body)
    assert all(s["state"] == "done" and s["issued"] == 250 for s in states.values()), states
    assert seen_queued
    assert len(json.loads(env.run("list", "--policy", "env-sensor", "--json").stdout)) == 750


def test_the_state_directory_is_private_whatever_the_umask(tmp_path, database_url, serve):
    """Attack (issue 14, item 11): another local user reads the database (pending CSRs, token
    digests, the audit log) or the batch outputs. Everything device-ca creates under
    $DEVICE_CA_HOME, started with umask 000 in a directory made 0755, is 0700 / 0600: the SQLite
    database with its WAL and SHM files, CA files, CRL, TLS key and certificate, locks and batches."""
    import os
    import stat

    env = new_ca_env(tmp_path, database_url)
    if database_url.startswith("sqlite"):
        env.database_url = f"sqlite:///{env.home / 'device-ca.db'}"              # where device-ca puts it
    env.home.chmod(0o755)
    old = os.umask(0)
    try:
        env.run("init", "--organization", "BuildingCo")
        csr = openssl_csr(tmp_path, "station-line-6", "/O=BuildingCo/OU=manufacturing-station/CN=station-line-6")
        env.run("issue", "--policy", "manufacturing-station", "--csr", str(csr), "--out",
                str(tmp_path / "station-line-6.pem"), "--allow-policy", "env-sensor")
        server = serve(env, "--rate-limit", "0")
    finally:
        os.umask(old)
    status, answer = _api(server, "/api/v1/batches?policy=env-sensor&batch_id=private", *_as(tmp_path, "station-line-6"),
                          "-H", "Content-Type: application/x-ndjson", body=_batch(["env-b001", "env-b002"]))
    assert status == 202, answer
    assert _wait_done_as(server, tmp_path, "private", "station-line-6")["issued"] == 2
    serial = json.loads(env.run("list", "--device-id", "env-b001", "--json").stdout)[0]["serial"]
    env.run("revoke", serial, "--reason", "superseded")              # a CRL is published on the way
    ours = lambda p: not p.name.startswith(("serve-", "curl-", "api-", "hsm-pin"))   # the harness's own files
    created = [p for p in env.home.rglob("*") if ours(p)]
    names = {p.relative_to(env.home).as_posix() for p in created}
    expected = {"ca/chain.pem", "crl/issuing.crl", "tls/server.key", "tls/server.pem", "batches/private/env-b001.pem"}
    if database_url.startswith("sqlite"):
        expected |= {"device-ca.db"}           # with its -wal (and -shm) while they exist: checked below
    assert expected <= names, sorted(names)
    assert stat.S_IMODE(env.home.stat().st_mode) == 0o700
    loose = {p.relative_to(env.home).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in created
             if stat.S_IMODE(p.stat().st_mode) & 0o077}
    assert loose == {}, loose
