"""The operators' REST API (/api/v1) over real mutual TLS (curl) against `device-ca serve` on SoftHSM:
operator certificates issued with the CLI and a role; what each role may do; attackers (no
certificate, a device's, a station's, a viewer, a revoked operator) change nothing (no row, no
audit event); problem details for errors; the OpenAPI 3.1 document checked with
openapi-spec-validator and real answers checked against it with openapi-core."""
from __future__ import annotations

import base64
import json
import subprocess
import time
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from helpers import make_csr
from integration.cli_harness import issue_operators, new_ca_env, openssl_csr
from integration.est_pki import device_csr
from integration.server_harness import policy_dir_with

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLES = {"vera": "viewer", "otto": "operator", "sofia": "security-officer", "olga": "operator"}


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str
    path: str
    query: str

    def json(self):
        return json.loads(self.body)


@pytest.fixture(scope="module")
def api(tmp_path_factory, module_database_url, module_serve):
    tmp = tmp_path_factory.mktemp("operators-api")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    issue_operators(env, tmp, ROLES)
    station = openssl_csr(tmp, "station-line-3", "/O=BuildingCo/OU=manufacturing-station/CN=station-line-3")
    env.run("issue", "--policy", "manufacturing-station", "--csr", str(station), "--out",
            str(tmp / "station-line-3.pem"), "--allow-policy", "env-sensor")
    for device in ("lock-5", "lock-6", "lock-7", "lock-8", "lock-9"):
        csr = openssl_csr(tmp, device, f"/O=BuildingCo/OU=door-lock/CN={device}")
        env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--out", str(tmp / f"{device}.pem"))
    policies = policy_dir_with(tmp, {"guarded-lock": 'subject = "CN={device_id},OU=guarded-lock,O=BuildingCo"\n'
                                                     'require_approval = true\n'})
    return env, module_serve(env, "--rate-limit", "0", policy_dir=policies), tmp


def call(api, who: str | None, method: str, path: str, body=None, query: str = "", headers=()) -> Answer:
    env, server, tmp = api
    base = f"https://127.0.0.1:{server.port}"
    out = env.home / f"api-{time.monotonic_ns()}"
    cmd = ["curl", "-s", "-o", str(out), "-w", "%{http_code} %{content_type}", "--cacert", str(server.chain),
           "--max-time", "60", "-X", method]
    if who is not None:
        cmd += ["--cert", str(tmp / f"{who}.pem"), "--key", str(tmp / f"{who}.key")]
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        cmd += ["--data-binary", "@-", "-H", "Content-Type: application/json"]
    for header in headers:
        cmd += ["-H", header]
    cmd.append(f"{base}/api/v1{path}" + (f"?{query}" if query else ""))
    proc = subprocess.run(cmd, input=data, capture_output=True, timeout=90)
    status, _, content_type = proc.stdout.decode().partition(" ")
    return Answer(int(status or 0), out.read_bytes() if out.exists() else b"", content_type, f"/api/v1{path}", query)


def serial_of(tmp, name: str) -> str:
    return format(x509.load_pem_x509_certificate((tmp / f"{name}.pem").read_bytes()).serial_number, "036x")


def state(env) -> tuple:
    """What a refused request must leave as it was: every certificate's status, the audit head,
    tokens, pending requests and blocked keys."""
    listing = json.loads(env.run("list", "--json").stdout)
    audit = json.loads(env.run("audit", "verify", "--json").stdout)
    tokens = json.loads(env.run("token", "list", "--json").stdout)
    pending = json.loads(env.run("pending", "list", "--all", "--json").stdout)
    blocked = json.loads(env.run("keys", "blocked", "--json").stdout)
    return [(c["serial"], c["status"]) for c in listing], audit["events"], audit["head"], tokens, pending, blocked


def is_problem(answer: Answer, status: int) -> bool:
    if answer.status != status or answer.content_type != "application/problem+json":
        return False
    problem = answer.json()
    return problem["status"] == status and problem["title"] and problem["detail"] and problem["type"]


def test_without_certificate_401_and_devices_stations_403_on_every_endpoint(api):
    """Attack: no client certificate, a device's, a station's: refused on every admin endpoint,
    reads and writes alike, and nothing changed."""
    env, server, tmp = api
    before = state(env)
    serial = serial_of(tmp, "lock-5")
    endpoints = [("GET", "/certificates", None), ("GET", f"/certificates/{serial}", None),
                 ("GET", f"/certificates/{serial}/pem", None), ("GET", "/devices/lock-5", None),
                 ("POST", f"/certificates/{serial}/revoke", {"reason": "keyCompromise"}),
                 ("POST", "/devices/lock-5/decommission", None),
                 ("POST", "/tokens", {"policy": "door-lock", "device_id": "lock-77"}), ("GET", "/tokens", None),
                 ("GET", "/pending", None), ("GET", "/policies", None), ("GET", "/audit", None),
                 ("GET", "/audit/verify", None), ("GET", "/keycloak/status", None), ("GET", "/health", None),
                 ("GET", "/batches", None)]
    for method, path, body in endpoints:
        assert is_problem(call(api, None, method, path, body), 401), (method, path)
        assert is_problem(call(api, "lock-5", method, path, body), 403), (method, path)
        assert is_problem(call(api, "station-line-3", method, path, body), 403), (method, path)
    assert state(env) == before


def test_viewer_reads_but_changes_nothing(api):
    env, server, tmp = api
    listed = call(api, "vera", "GET", "/certificates", query="policy=door-lock")
    assert listed.status == 200 and {c["device_id"] for c in listed.json()["items"]} >= {"lock-5", "lock-6"}
    before = state(env)
    serial = serial_of(tmp, "lock-5")
    for method, path, body in [("POST", f"/certificates/{serial}/revoke", {"reason": "superseded"}),
                               ("POST", "/devices/lock-5/decommission", None),
                               ("POST", "/tokens", {"policy": "door-lock", "device_id": "lock-77"}),
                               ("POST", "/batches?policy=env-sensor", None)]:
        assert is_problem(call(api, "vera", method, path, body), 403), (method, path)
    assert state(env) == before


def test_operator_may_not_revoke_for_key_compromise_a_security_officer_may(api):
    env, server, tmp = api
    lock6, lock7 = serial_of(tmp, "lock-6"), serial_of(tmp, "lock-7")
    before = state(env)
    refused = call(api, "otto", "POST", f"/certificates/{lock6}/revoke", {"reason": "keyCompromise"})
    assert is_problem(refused, 403) and "may not" in refused.json()["detail"]
    assert state(env) == before

    done = call(api, "sofia", "POST", f"/certificates/{lock6}/revoke", {"reason": "keyCompromise"})
    assert done.status == 200 and done.json()["status"] == "revoked"
    assert done.json()["revocation_reason"] == "keyCompromise"
    blocked = json.loads(env.run("keys", "blocked", "--json").stdout)
    sofia = f"operator:CN=sofia,OU=admin,O=BuildingCo serial {serial_of(tmp, 'sofia')}"
    assert [b["revoked_serial"] for b in blocked] == [lock6] and blocked[0]["actor"] == sofia

    done = call(api, "otto", "POST", f"/certificates/{lock7}/revoke", {"reason": "cessationOfOperation"})
    assert done.status == 200 and done.json()["revocation_reason"] == "cessationOfOperation"
    shown = json.loads(env.run("show", lock7, "--json").stdout)
    assert shown["status"] == "revoked"
    events = call(api, "vera", "GET", "/audit", query="limit=500").json()["items"]
    revoked = [e for e in events if e["action"] == "certificate.revoked" and e["serial"] == lock7]
    assert [e["actor"] for e in revoked] == [f"operator:CN=otto,OU=admin,O=BuildingCo serial {serial_of(tmp, 'otto')}"]


def test_a_revoked_operator_is_refused_at_once(api):
    env, server, tmp = api
    assert call(api, "olga", "GET", "/certificates").status == 200
    env.run("revoke", serial_of(tmp, "olga"), "--reason", "affiliationChanged")
    before = state(env)
    assert is_problem(call(api, "olga", "GET", "/certificates"), 403)
    assert is_problem(call(api, "olga", "POST", "/devices/lock-9/decommission"), 403)
    assert is_problem(call(api, "olga", "POST", "/tokens", {"policy": "door-lock", "device_id": "lock-78"}), 403)
    assert state(env) == before


def test_operator_certificates_are_never_issued_over_est_or_the_batch_api(api):
    """Attack: an admin certificate asked for with a bootstrap token (none is given out for the
    admin policy), over EST without credentials or as a re-enrollment with an operator's own
    certificate, in a station's or an operator's batch: all refused, no operator certificate more."""
    env, server, tmp = api
    admins = json.loads(env.run("list", "--policy", "admin", "--json").stdout)
    token = call(api, "otto", "POST", "/tokens", {"policy": "admin", "device_id": "mallory"})
    assert is_problem(token, 403) and "only an operator issues them" in token.json()["detail"]
    assert env.run("token", "create", "--policy", "admin", "--device-id", "mallory", check=False).returncode == 7
    _, csr = device_csr(tmp, "mallory", "/O=BuildingCo/OU=admin/CN=mallory")
    status, _, _ = server.curl("/admin/simpleenroll", "-H", "Content-Type: application/pkcs10", body=csr)
    assert status in (401, 403)
    _, renewal = device_csr(tmp, "otto-renewal", "/O=BuildingCo/OU=admin/CN=otto", key=tmp / "otto.key")
    status, _, _ = server.curl("/admin/simplereenroll", "-H", "Content-Type: application/pkcs10",
                               "--cert", str(tmp / "otto.pem"), "--key", str(tmp / "otto.key"), body=renewal)
    assert status == 403                                  # an operator renews with device-ca issue, not over EST
    batch = json.dumps({"device_id": "mallory", "csr": base64.b64encode(
        make_csr("mallory", ou="admin", encoding=Encoding.DER)).decode()}).encode() + b"\n"
    for who in ("station-line-3", "sofia"):
        answer = call(api, who, "POST", "/batches", batch, query="policy=admin&batch_id=mint-admin",
                      headers=("Content-Type: application/x-ndjson",))
        assert is_problem(answer, 403), (who, answer)
    assert call(api, "sofia", "GET", "/batches/mint-admin").status == 404
    assert json.loads(env.run("list", "--policy", "admin", "--json").stdout) == admins


def test_bad_requests_are_problem_details(api):
    env, server, tmp = api
    serial = serial_of(tmp, "lock-8")
    before = state(env)
    for answer in (call(api, "sofia", "POST", f"/certificates/{serial}/revoke", b"{not json"),
                   call(api, "sofia", "POST", f"/certificates/{serial}/revoke", {"reason": "bored"}),
                   call(api, "sofia", "POST", f"/certificates/{serial}/revoke", [1, 2]),
                   call(api, "otto", "POST", "/tokens", {"policy": "door-lock"}),
                   call(api, "otto", "POST", "/tokens", {"policy": "door-lock", "device_id": "lock-79", "ttl": "1y"}),
                   call(api, "vera", "GET", "/certificates", query="cursor=%%%"),
                   call(api, "vera", "GET", "/audit", query="cursor=WyJ4IiwgInkiXQ"),
                   call(api, "vera", "GET", "/certificates", query="limit=100000")):
        assert is_problem(answer, 400), answer
    assert is_problem(call(api, "sofia", "POST", "/certificates/zz/revoke", {"reason": "unspecified"}), 400)
    assert is_problem(call(api, "vera", "GET", "/certificates/1234abcd"), 404)
    assert is_problem(call(api, "vera", "GET", "/nothing-here"), 404)
    assert state(env) == before


def test_certificates_are_paged_with_a_cursor_like_the_cli_lists_them(api):
    env, server, tmp = api
    seen, query = [], "limit=2"
    for _ in range(50):
        page = call(api, "vera", "GET", "/certificates", query=query).json()
        assert len(page["items"]) <= 2
        seen += [c["serial"] for c in page["items"]]
        if page["next"] is None:
            break
        query = f"limit=2&cursor={page['next']}"
    assert seen == [c["serial"] for c in json.loads(env.run("list", "--json").stdout)]
    serial = serial_of(tmp, "lock-5")
    pem = call(api, "vera", "GET", f"/certificates/{serial}/pem")
    der = call(api, "vera", "GET", f"/certificates/{serial}/der")
    assert pem.status == der.status == 200 and der.content_type == "application/pkix-cert"
    assert x509.load_pem_x509_certificate(pem.body).public_bytes(Encoding.DER) == der.body
    assert x509.load_der_x509_certificate(der.body).serial_number == int(serial, 16)
    shown = call(api, "vera", "GET", f"/certificates/{serial_of(tmp, 'otto')}").json()
    assert shown["role"] == "operator" and shown["policy"] == "admin"


def test_tokens_pending_requests_and_devices(api):
    env, server, tmp = api
    created = call(api, "otto", "POST", "/tokens", {"policy": "guarded-lock", "device_id": "gl-1", "ttl": "1h"})
    assert created.status == 201 and created.json()["secret"]
    secret = created.json()["secret"]
    listed = call(api, "vera", "GET", "/tokens", query="device_id=gl-1").json()["items"]
    assert [t["id"] for t in listed] == [created.json()["id"]] and secret not in json.dumps(listed)
    assert listed[0]["created_by"].startswith("operator:CN=otto,OU=admin")

    _, csr = device_csr(tmp, "gl-1", "/O=BuildingCo/OU=guarded-lock/CN=gl-1")
    status, _, _ = server.curl("/guarded-lock/simpleenroll", "-H", "Content-Type: application/pkcs10",
                               "-u", f"gl-1:{secret}", body=csr)
    assert status == 202
    waiting = call(api, "vera", "GET", "/pending").json()["items"]
    assert [r["device_id"] for r in waiting] == ["gl-1"]
    assert is_problem(call(api, "vera", "POST", f"/pending/{waiting[0]['id']}/approve"), 403)
    approved = call(api, "otto", "POST", f"/pending/{waiting[0]['id']}/approve")
    assert approved.status == 200 and approved.json()["state"] == "approved"
    assert json.loads(env.run("pending", "list", "--all", "--json").stdout)[0]["decided_by"].startswith(
        "operator:CN=otto")
    status, body, _ = server.curl("/guarded-lock/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                  "-u", f"gl-1:{secret}", body=csr)
    assert status == 200, body

    second = call(api, "otto", "POST", "/tokens", {"policy": "guarded-lock", "device_id": "gl-2"}).json()["secret"]
    _, csr2 = device_csr(tmp, "gl-2", "/O=BuildingCo/OU=guarded-lock/CN=gl-2")
    assert server.curl("/guarded-lock/simpleenroll", "-H", "Content-Type: application/pkcs10",
                       "-u", f"gl-2:{second}", body=csr2)[0] == 202
    request_id = [r["id"] for r in call(api, "vera", "GET", "/pending").json()["items"] if r["device_id"] == "gl-2"]
    rejected = call(api, "sofia", "POST", f"/pending/{request_id[0]}/reject")
    assert rejected.status == 200 and rejected.json()["state"] == "rejected"
    assert server.curl("/guarded-lock/simpleenroll", "-H", "Content-Type: application/pkcs10",
                       "-u", f"gl-2:{second}", body=csr2)[0] == 403
    assert json.loads(env.run("list", "--device-id", "gl-2", "--json").stdout) == []

    other = call(api, "otto", "POST", "/tokens", {"policy": "door-lock", "device_id": "lock-80"}).json()
    withdrawn = call(api, "otto", "POST", f"/tokens/{other['id']}/withdraw")
    assert withdrawn.status == 200 and withdrawn.json()["state"] == "withdrawn"
    assert is_problem(call(api, "otto", "POST", f"/tokens/{other['id']}/withdraw"), 409)

    device = call(api, "vera", "GET", "/devices/lock-9").json()
    assert device["status"] == "active" and [c["status"] for c in device["certificates"]] == ["good"]
    retired = call(api, "otto", "POST", "/devices/lock-9/decommission")
    assert retired.status == 200 and retired.json()["revoked"] == [serial_of(tmp, "lock-9")]
    device = call(api, "vera", "GET", "/devices/lock-9").json()
    assert device["status"] == "decommissioned" and [c["status"] for c in device["certificates"]] == ["revoked"]
    assert is_problem(call(api, "vera", "GET", "/devices/nobody"), 404)


def test_batches_are_readable_by_operators_submitted_by_role_operator(api):
    env, server, tmp = api
    line = json.dumps({"device_id": "env-a001", "csr": base64.b64encode(
        make_csr("env-a001", ou="env-sensor", encoding=Encoding.DER)).decode()}).encode() + b"\n"
    ndjson = ("Content-Type: application/x-ndjson",)
    submitted = call(api, "station-line-3", "POST", "/batches", line, query="policy=env-sensor&batch_id=line-a",
                     headers=ndjson)
    assert submitted.status == 202, submitted
    assert call(api, "vera", "GET", "/batches/line-a").status == 200
    assert "line-a" in [b["batch"] for b in call(api, "vera", "GET", "/batches").json()["items"]]
    before = state(env)
    refused = call(api, "vera", "POST", "/batches", line.replace(b"a001", b"a002"),
                   query="policy=env-sensor&batch_id=by-vera", headers=ndjson)
    assert is_problem(refused, 403)
    assert state(env) == before and call(api, "vera", "GET", "/batches/by-vera").status == 404
    mine = call(api, "otto", "POST", "/batches", line.replace(b"a001", b"a003"),
                query="policy=env-sensor&batch_id=by-otto", headers=ndjson)
    assert mine.status == 202, mine
    listed = {b["batch"]: b for b in call(api, "vera", "GET", "/batches").json()["items"]}
    assert listed["by-otto"]["created_by"].startswith("operator:CN=otto,OU=admin")
    assert is_problem(call(api, "station-line-3", "GET", "/batches/by-otto"), 403)    # another caller's


def test_audit_keycloak_health_and_policies(api):
    env, server, tmp = api
    verified = call(api, "vera", "GET", "/audit/verify")
    assert verified.status == 200 and verified.json()["ok"] is True
    assert verified.json()["events"] == json.loads(env.run("audit", "verify", "--json").stdout)["events"]
    first = call(api, "vera", "GET", "/audit", query="limit=3").json()
    second = call(api, "vera", "GET", "/audit", query=f"limit=3&cursor={first['next']}").json()
    assert [e["seq"] for e in first["items"] + second["items"]] == list(range(1, 7))
    assert call(api, "vera", "GET", "/keycloak/status").json()["configured"] is False
    assert is_problem(call(api, "vera", "GET", "/keycloak/diff"), 404)          # Keycloak not configured
    assert call(api, "vera", "GET", "/health").json() == {"status": "ok", "checks": {"database": "ok", "hsm": "ok"}}
    names = [p["name"] for p in call(api, "vera", "GET", "/policies").json()["items"]]
    assert "admin" in names and "door-lock" in names
    assert call(api, "vera", "GET", "/policies/admin").json()["enrollment"] == ["admin"]
    assert is_problem(call(api, "vera", "GET", "/policies/nope"), 404)


def test_the_openapi_document_is_valid_and_real_answers_match_it(api):
    from openapi_core import Config, OpenAPI
    from openapi_core.testing import MockRequest, MockResponse
    from openapi_spec_validator import validate

    env, server, tmp = api
    served = call(api, None, "GET", "/openapi.json")
    assert served.status == 200
    document = served.json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    # RFC 9457's media type is JSON; openapi-core reads only application/json as such unless told
    spec = OpenAPI.from_dict(document, config=Config(
        extra_media_type_deserializers={"application/problem+json": json.loads}))
    serial = serial_of(tmp, "lock-5")
    token = call(api, "otto", "POST", "/tokens", {"policy": "door-lock", "device_id": "lock-81"})
    answers = [
        call(api, "vera", "GET", "/certificates", query="limit=2"),
        call(api, "vera", "GET", f"/certificates/{serial}"),
        call(api, "vera", "GET", f"/certificates/{serial}/pem"),
        call(api, "vera", "GET", "/devices/lock-5"), token,
        call(api, "vera", "GET", "/tokens"), call(api, "vera", "GET", "/pending", query="state=all"),
        call(api, "vera", "GET", "/policies"), call(api, "vera", "GET", "/policies/door-lock"),
        call(api, "vera", "GET", "/audit", query="limit=5"), call(api, "vera", "GET", "/audit/verify"),
        call(api, "vera", "GET", "/keycloak/status"), call(api, "vera", "GET", "/health"),
        call(api, "vera", "GET", "/batches"),
        call(api, "otto", "POST", f"/tokens/{token.json()['id']}/withdraw"),
        call(api, "otto", "POST", f"/certificates/{serial_of(tmp, 'lock-8')}/revoke", {"reason": "superseded"}),
        call(api, None, "GET", "/certificates"), call(api, "vera", "POST", "/devices/lock-5/decommission"),
        call(api, "vera", "GET", "/certificates/abc"),
    ]
    assert [a.status for a in answers][-3:] == [401, 403, 404]
    for answer in answers:
        method = "POST" if answer.path.endswith(("/withdraw", "/revoke", "/decommission")) or (
            answer.path.endswith("/tokens") and answer.status == 201) else "GET"
        request = MockRequest(f"https://127.0.0.1:{server.port}", method, answer.path,
                              args=dict(p.split("=", 1) for p in answer.query.split("&") if p))
        spec.validate_response(request, MockResponse(answer.body, answer.status, content_type=answer.content_type))
    wrong = MockRequest(f"https://127.0.0.1:{server.port}", "GET", f"/api/v1/certificates/{serial}")
    with pytest.raises(Exception, match="InvalidData"):          # the check can fail: a certificate without fields
        spec.validate_response(wrong, MockResponse(b'{"serial": 5}', 200))


def test_the_cli_requires_a_role_for_operator_certificates_and_refuses_it_for_others(api):
    env, server, tmp = api
    before = state(env)
    csr = openssl_csr(tmp, "nobody", "/O=BuildingCo/OU=admin/CN=nobody")
    missing = env.run("issue", "--policy", "admin", "--csr", str(csr), check=False)
    assert missing.returncode == 3 and b"--role viewer|operator|security-officer" in missing.stderr
    unknown = env.run("issue", "--policy", "admin", "--csr", str(csr), "--role", "root", check=False)
    assert unknown.returncode == 2                                            # not one of click's choices
    lock = openssl_csr(tmp, "lock-90", "/O=BuildingCo/OU=door-lock/CN=lock-90")
    device = env.run("issue", "--policy", "door-lock", "--csr", str(lock), "--role", "viewer", check=False)
    assert device.returncode == 3 and b"do not authorise the admin API" in device.stderr
    assert state(env) == before


def _console(api, who: str | None, path: str = "/console/") -> tuple[int, dict, bytes]:
    env, server, tmp = api
    out, heads = env.home / f"console-{time.monotonic_ns()}", env.home / f"console-h-{time.monotonic_ns()}"
    cmd = ["curl", "-s", "-o", str(out), "-D", str(heads), "-w", "%{http_code}", "--cacert", str(server.chain),
           "--max-time", "60"]
    if who is not None:
        cmd += ["--cert", str(tmp / f"{who}.pem"), "--key", str(tmp / f"{who}.key")]
    proc = subprocess.run(cmd + [f"https://127.0.0.1:{server.port}{path}"], capture_output=True, timeout=90)
    headers = {}
    for line in heads.read_text(errors="replace").splitlines()[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(proc.stdout), headers, out.read_bytes()


def test_the_console_is_served_to_operators_only_with_its_security_headers(api):
    status, headers, body = _console(api, "vera")
    assert status == 200 and b"vera" in body and b"viewer" in body, body[:500]
    assert "default-src 'none'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    for who, expected in ((None, 401), ("station-line-3", 403), ("lock-5", 403)):
        status, headers, body = _console(api, who)
        assert status == expected and "default-src 'none'" in headers["content-security-policy"], (who, status)
        assert b"vera" not in body


def test_an_operator_cannot_lock_out_another_operator_a_security_officer_can(api):
    env, server, tmp = api
    csr = openssl_csr(tmp, "oscar", "/O=BuildingCo/OU=admin/CN=oscar")
    env.run("issue", "--policy", "admin", "--csr", str(csr), "--out", str(tmp / "oscar.pem"), "--role", "operator")
    before = state(env)
    for target in ("sofia", "oscar"):
        assert is_problem(call(api, "otto", "POST", f"/certificates/{serial_of(tmp, target)}/revoke",
                               {"reason": "affiliationChanged"}), 403)
        assert is_problem(call(api, "otto", "POST", f"/devices/{target}/decommission"), 403)
    assert state(env) == before
    assert call(api, "oscar", "GET", "/certificates").status == 200
    done = call(api, "sofia", "POST", f"/certificates/{serial_of(tmp, 'oscar')}/revoke", {"reason": "affiliationChanged"})
    assert done.status == 200 and done.json()["status"] == "revoked"
    assert is_problem(call(api, "oscar", "GET", "/certificates"), 403)
