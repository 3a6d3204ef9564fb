"""The console's operations pages (/console/pending, /batches, /keycloak, /audit) over real mutual TLS
against `device-ca serve` on SoftHSM, with operator certificates issued by the CLI with a role:
with curl (every page's status and security headers for each kind of caller; CSRF and role checks
on every POST, with nothing changed when refused) and in headless Chromium (an operator approves a
pending enrollment with the page's button and the device then collects its certificate; a viewer
sees no button, and its own valid CSRF token does not let it decide; every page rendered with no
CSP violation, screenshots under tmp_path/screenshots)."""
from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
import time
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from helpers import make_csr
from integration.browser import browsers  # noqa: F401 - the fixture
from integration.cli_harness import issue_operators, new_ca_env, openssl_csr
from integration.est_pki import device_csr
from integration.server_harness import policy_dir_with
from integration.test_operators_api import call, state

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLES = {"vera": "viewer", "otto": "operator"}
PAGES = ("/console/pending", "/console/batches", "/console/keycloak", "/console/audit")
TOKEN = re.compile(rb'name="csrf_token" value="([^"]+)"')
ENROLL = ("-H", "Content-Type: application/pkcs10")


@dataclass
class Page:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def token(self) -> str:
        found = TOKEN.search(self.body)
        assert found, self.body[:800]
        return found.group(1).decode()


@pytest.fixture(scope="module")
def ca(tmp_path_factory, module_database_url, module_serve):
    """A CA with a viewer, an operator, a station and a door lock (whose issuance queues a Keycloak
    change: Keycloak is not configured), served with a policy that requires approval, and a
    finished batch of two env sensors and one unusable input."""
    tmp = tmp_path_factory.mktemp("console-operations")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    issue_operators(env, tmp, ROLES)
    station = openssl_csr(tmp, "station-line-3", "/O=BuildingCo/OU=manufacturing-station/CN=station-line-3")
    env.run("issue", "--policy", "manufacturing-station", "--csr", str(station), "--out",
            str(tmp / "station-line-3.pem"), "--allow-policy", "env-sensor")
    lock = openssl_csr(tmp, "lock-5", "/O=BuildingCo/OU=door-lock/CN=lock-5")
    env.run("issue", "--policy", "door-lock", "--csr", str(lock), "--out", str(tmp / "lock-5.pem"))
    policies = policy_dir_with(tmp, {"guarded-lock": 'subject = "CN={device_id},OU=guarded-lock,O=BuildingCo"\n'
                                                     'require_approval = true\n'})
    server = module_serve(env, "--rate-limit", "0", policy_dir=policies)
    made = (env, server, tmp)
    lines = b"".join(json.dumps({"device_id": d, "csr": base64.b64encode(
        make_csr(d, ou="env-sensor", encoding=Encoding.DER)).decode()}).encode() + b"\n" for d in ("env-c001", "env-c002"))
    lines += json.dumps({"device_id": "env-c003", "csr": base64.b64encode(b"not a CSR").decode()}).encode() + b"\n"
    submitted = call(made, "station-line-3", "POST", "/batches", lines, query="policy=env-sensor&batch_id=line-c",
                     headers=("Content-Type: application/x-ndjson",))
    assert submitted.status == 202, submitted
    deadline = time.monotonic() + 60
    while call(made, "otto", "GET", "/batches/line-c").json()["state"] not in ("done", "finished", "failed"):
        assert time.monotonic() < deadline, call(made, "otto", "GET", "/batches/line-c").json()
        time.sleep(0.3)
    return made


def page(ca, who: str | None, path: str, form: dict[str, str] | None = None) -> Page:
    """GET ``path`` (POST ``form``, urlencoded, when given) with ``who``'s client certificate."""
    env, server, tmp = ca
    out = env.home / f"console-{time.monotonic_ns()}"
    cmd = ["curl", "-s", "-o", str(out), "-D", f"{out}.h", "-w", "%{http_code}", "--cacert", str(server.chain),
           "--max-time", "60"]
    if who is not None:
        cmd += ["--cert", str(tmp / f"{who}.pem"), "--key", str(tmp / f"{who}.key")]
    if form is not None:
        cmd += ["-X", "POST", "--data", "&".join(f"{k}={v}" for k, v in form.items()) or "x=1"]
    proc = subprocess.run(cmd + [f"https://127.0.0.1:{server.port}{path}"], capture_output=True, timeout=90)
    headers = {}
    for line in open(f"{out}.h", errors="replace").read().splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Page(int(proc.stdout or 0), headers, out.read_bytes() if out.exists() else b"")


def secured(answer: Page) -> bool:
    return ("default-src 'none'" in answer.headers.get("content-security-policy", "")
            and answer.headers.get("x-frame-options") == "DENY")


def pending_request(ca, device: str) -> tuple[str, str, bytes]:
    """A bootstrap token for ``device`` of guarded-lock, its enrollment answered 202: (request id,
    token secret, the CSR body to send again)."""
    env, server, tmp = ca
    secret = call(ca, "otto", "POST", "/tokens", {"policy": "guarded-lock", "device_id": device}).json()["secret"]
    _, csr = device_csr(tmp, device, f"/O=BuildingCo/OU=guarded-lock/CN={device}")
    assert server.curl("/guarded-lock/simpleenroll", *ENROLL, "-u", f"{device}:{secret}", body=csr)[0] == 202
    ids = [r["id"] for r in call(ca, "vera", "GET", "/pending").json()["items"] if r["device_id"] == device]
    assert len(ids) == 1
    return ids[0], secret, csr


def request_state(ca, request_id: str) -> dict:
    env, _, _ = ca
    return next(r for r in json.loads(env.run("pending", "list", "--all", "--json").stdout) if r["id"] == request_id)


def test_every_page_is_for_operators_only_with_the_security_headers(ca):
    for path in PAGES:
        shown = page(ca, "vera", path)
        assert shown.status == 200 and secured(shown), (path, shown.status, shown.headers)
        assert b"vera" in shown.body and b"viewer" in shown.body
        assert b" style=" not in shown.body and b"<script" not in shown.body
        for who, expected in ((None, 401), ("lock-5", 403), ("station-line-3", 403)):
            refused = page(ca, who, path)
            assert refused.status == expected and secured(refused), (path, who, refused.status)
            assert b"vera" not in refused.body and b"csrf_token" not in refused.body
    for path in ("/console/pending/x/approve", "/console/pending/x/reject", "/console/audit/verify"):
        assert page(ca, None, path, {}).status == 401
        assert page(ca, "lock-5", path, {}).status == 403


def test_batches_show_progress_by_state(ca):
    shown = page(ca, "vera", "/console/batches")
    row = re.search(rb'<tr data-batch="line-c">(.*?)</tr>', shown.body, re.S).group(1)
    counts = dict(re.findall(rb'data-state="(\w+)">(\d+)<', row))
    assert counts == {b"issued": b"2", b"failed": b"1", b"reserved": b"0", b"pending": b"0", b"items": b"3"}, counts
    assert b'<svg class="progress"' in row and b'<rect class="issued" x="0" y="0" width="160"' in row
    assert b'<rect class="failed" x="160" y="0" width="80"' in row
    assert b"station:" in row


def test_keycloak_not_configured_with_its_waiting_outbox_rows(ca):
    status = call(ca, "vera", "GET", "/keycloak/status").json()
    assert status["configured"] is False and status["pending"] >= 1
    shown = page(ca, "vera", "/console/keycloak")
    assert b"Keycloak is not configured" in shown.body
    assert re.search(rb'id="outbox-pending">(\d+)<', shown.body).group(1) == str(status["pending"]).encode()
    rows = re.findall(rb'<tr data-row="(\d+)">', shown.body)
    assert [int(r) for r in rows] == [e["id"] for e in status["entries"]]
    assert b"keycloak.upsert" in shown.body and b"lock-5" in shown.body


def test_keycloak_configured_but_unreachable_shows_the_failing_rows_and_the_error(ca, serve):
    """A second node of the same CA, configured with a Keycloak that does not answer: its drainer
    fails, and its console says so (failing rows, the error) while the rows stay pending."""
    env, _, tmp = ca
    node = serve(dataclasses.replace(env, extra={**env.extra, "DEVICE_CA_KEYCLOAK_URL": "http://127.0.0.1:9",
                                                 "DEVICE_CA_KEYCLOAK_TIMEOUT": "2",
                                                 "DEVICE_CA_KEYCLOAK_CLIENT_SECRET": "unused"}), "--rate-limit", "0")
    on_node = (env, node, tmp)
    deadline = time.monotonic() + 60
    while True:
        shown = page(on_node, "vera", "/console/keycloak")
        assert shown.status == 200 and secured(shown)
        failing = int(re.search(rb'id="outbox-failing">(\d+)<', shown.body).group(1))
        if failing or b"Last drain error</dt><dd>none" not in shown.body:
            break
        assert time.monotonic() < deadline, shown.body.decode()
        time.sleep(0.5)
    assert b"Keycloak is configured at <code>http://127.0.0.1:9</code>" in shown.body
    assert b"Keycloak is not configured" not in shown.body
    status = call(on_node, "vera", "GET", "/keycloak/status").json()
    assert status["configured"] is True and status["pending"] >= 1
    assert status["last_error"] or status["last_drain_error"]
    for error in filter(None, (status["last_error"], status["last_drain_error"])):
        assert error.encode() in shown.body or error.replace("'", "&#39;").encode() in shown.body


def test_audit_tail_newest_first_paged_and_verified(ca):
    env, _, _ = ca
    head = json.loads(env.run("audit", "verify", "--json").stdout)
    shown = page(ca, "vera", "/console/audit")
    seqs = [int(s) for s in re.findall(rb'<tr data-seq="(\d+)">', shown.body)]
    assert seqs[0] == head["events"] and seqs == sorted(seqs, reverse=True)
    older = page(ca, "vera", "/console/audit?before=3")
    assert [int(s) for s in re.findall(rb'<tr data-seq="(\d+)">', older.body)] == [3, 2, 1]
    assert b'rel="prev"' in older.body and b'rel="next"' not in older.body
    assert page(ca, "vera", "/console/audit?before=x").status == 400

    verified = page(ca, "vera", "/console/audit/verify", {"csrf_token": shown.token})   # a viewer may verify
    assert verified.status == 200 and secured(verified)
    assert b"Chain verified:" in verified.body and f"{head['events']} events".encode() in verified.body
    assert head["head"].encode() in verified.body
    assert page(ca, "vera", "/console/audit/verify", {}).status == 403
    assert page(ca, "vera", "/console/audit/verify", {"csrf_token": "1.00"}).status == 403


def test_decisions_need_the_callers_csrf_token_and_a_deciding_role(ca):
    request_id, _, _ = pending_request(ca, "gl-c1")
    env, _, _ = ca
    before = state(env)
    approve = f"/console/pending/{request_id}/approve"
    viewers = page(ca, "vera", "/console/audit").token
    operators = page(ca, "otto", "/console/pending")
    assert f'data-request="{request_id}"'.encode() in operators.body and b'class="approve"' in operators.body
    for form in ({}, {"csrf_token": ""}, {"csrf_token": "12345.deadbeef"}, {"csrf_token": viewers}):
        refused = page(ca, "otto", approve, form)
        assert refused.status == 403 and secured(refused), form
    refused = page(ca, "vera", approve, {"csrf_token": viewers})          # the viewer's own, valid token
    assert refused.status == 403
    refused = page(ca, "vera", f"/console/pending/{request_id}/reject", {"csrf_token": viewers})
    assert refused.status == 403
    assert state(env) == before and request_state(ca, request_id)["state"] == "pending"

    rejected = page(ca, "otto", f"/console/pending/{request_id}/reject", {"csrf_token": operators.token})
    assert rejected.status == 303 and rejected.headers["location"].endswith("/console/pending")
    decided = request_state(ca, request_id)
    assert decided["state"] == "rejected" and decided["decided_by"].startswith("operator:CN=otto")
    again = page(ca, "otto", f"/console/pending/{request_id}/approve", {"csrf_token": operators.token})
    assert again.status == 409 and request_state(ca, request_id)["state"] == "rejected"
    assert page(ca, "otto", "/console/pending/nope/approve", {"csrf_token": operators.token}).status == 404


def test_an_operator_approves_in_the_browser_and_the_device_collects_its_certificate(ca, browsers, tmp_path):
    from selenium.webdriver.common.by import By

    env, server, tmp = ca
    origin = f"https://127.0.0.1:{server.port}"
    request_id, secret, csr = pending_request(ca, "gl-c2")

    viewer = browsers(origin, server.chain, tmp / "vera.pem", tmp / "vera.key")
    shown = viewer.open(f"{origin}/console/pending")
    assert shown.status == 200 and "gl-c2" in shown.text
    assert viewer.driver.find_elements(By.CSS_SELECTOR, "button.approve, button.reject") == []
    viewer.screenshot("pending-viewer")
    viewer.open(f"{origin}/console/audit")
    token = viewer.driver.find_element(By.CSS_SELECTOR, "form.verify input[name=csrf_token]").get_attribute("value")
    before = state(env)
    refused = viewer.post(f"{origin}/console/pending/{request_id}/approve", {"csrf_token": token})
    assert refused.status == 403, refused
    viewer.screenshot("approve-refused-viewer")
    assert state(env) == before and request_state(ca, request_id)["state"] == "pending"

    operator = browsers(origin, server.chain, tmp / "otto.pem", tmp / "otto.key")
    started = time.monotonic()
    assert operator.open(f"{origin}/console/pending").status == 200
    operator.screenshot("pending-operator")
    operator.driver.find_element(By.CSS_SELECTOR, f'tr[data-request="{request_id}"] button.approve').click()
    deadline = time.monotonic() + 30
    while operator.driver.find_elements(By.CSS_SELECTOR, f'tr[data-request="{request_id}"]'):
        assert time.monotonic() < deadline, operator.text()
        time.sleep(0.1)
    assert operator.driver.current_url == f"{origin}/console/pending"
    approved_in = time.monotonic() - started
    decided = request_state(ca, request_id)
    assert decided["state"] == "approved" and decided["decided_by"].startswith("operator:CN=otto"), decided
    assert "gl-c2" in operator.open(f"{origin}/console/pending?state=approved").text
    operator.screenshot("approved")

    status, body, _ = server.curl("/guarded-lock/simpleenroll", *ENROLL, "-u", f"gl-c2:{secret}", body=csr)
    assert status == 200, body
    assert [c["device_id"] for c in json.loads(env.run("list", "--device-id", "gl-c2", "--json").stdout)] == ["gl-c2"]

    for path in PAGES + ("/console/",):
        assert operator.open(f"{origin}{path}").status == 200, path
        operator.screenshot(path.strip("/").replace("/", "-"))
    operator.open(f"{origin}/console/audit")
    operator.driver.find_element(By.CSS_SELECTOR, "form.verify button").click()
    deadline = time.monotonic() + 30
    while not operator.driver.find_elements(By.ID, "verification"):
        assert time.monotonic() < deadline, operator.text()
        time.sleep(0.1)
    assert "Chain verified" in operator.text()
    operator.screenshot("audit-verified")
    violations = [m for m in operator.console_messages() + viewer.console_messages()
                  if "Content Security Policy" in m or "Refused" in m]
    assert violations == []
    assert len(list((tmp_path / "screenshots").glob("*.png"))) >= 9
    print(f"browser approval took {approved_in:.2f}s")
