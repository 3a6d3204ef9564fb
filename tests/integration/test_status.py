"""Revocation status against a running `device-ca serve`: OCSP with openssl (POST, GET, nonce),
CRLs with openssl verify -crl_check and pkilint, decommissioning."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from integration.cli_harness import new_ca_env, openssl, openssl_csr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_database_url, module_serve):
    tmp = tmp_path_factory.mktemp("status")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    return env, module_serve(env, "--rate-limit", "0"), tmp


def _issue(env, tmp, device):
    csr = openssl_csr(tmp, device, f"/O=BuildingCo/OU=door-lock/CN={device}")
    pem = tmp / f"{device}.pem"
    out = env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--out", str(pem)).stderr.decode()
    return pem, out.split("issued serial ")[1].split()[0]


def _ocsp(env, server, cert, *extra):
    ca = env.ca_dir
    return openssl("ocsp", "-issuer", str(ca / "issuing.pem"), "-cert", str(cert), "-url", f"{server.http}/ocsp",
                   "-CAfile", str(ca / "root.pem"), *extra)


def test_ocsp_good_then_revoked_at_once(served):
    env, server, tmp = served
    cert, serial = _issue(env, tmp, "lock-1")
    good = _ocsp(env, server, cert)                                 # POST with a nonce
    assert "Response verify OK" in good.stderr + good.stdout and f"{cert}: good" in good.stdout, good.stderr
    assert "WARNING: no nonce" not in good.stderr + good.stdout
    for _ in range(4):                       # nonce-less answers are cached by every HTTP worker
        cached = _ocsp(env, server, cert, "-no_nonce")
        assert f"{cert}: good" in cached.stdout, cached.stdout
    env.run("revoke", serial, "--reason", "keyCompromise")
    for _ in range(4):                       # ... and none of them may serve the cached good any more
        revoked = _ocsp(env, server, cert, "-no_nonce")
        assert f"{cert}: revoked" in revoked.stdout and "Reason: keyCompromise" in revoked.stdout, revoked.stdout


def _presigned(env, serial, want_status, timeout=30):
    """The server's pre-signed answer for ``serial`` once it states ``want_status`` (polls the database)."""
    from device_ca.store import Store

    store = Store(env.database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            presigned = store.status.status_and_presigned(serial.lower())[1]
            if presigned is not None and presigned.status == want_status:
                return presigned
            time.sleep(0.5)
    finally:
        store.db.dispose()
    raise AssertionError(f"no pre-signed {want_status} answer for {serial} after {timeout} s")


def test_server_presigns_answers_for_new_and_revoked_certificates(served):
    env, server, tmp = served
    cert, serial = _issue(env, tmp, "lock-5")
    try:
        good = _presigned(env, serial, "good")
    except AssertionError as exc:  # the janitor pre-signs: what it logged says why it did not
        raise AssertionError(f"{exc}; serve log: {server.log.read_text()[-3000:]}") from None
    req = tmp / "req5.der"
    openssl("ocsp", "-issuer", str(env.ca_dir / "issuing.pem"), "-cert", str(cert), "-no_nonce", "-reqout", str(req))
    status, body = _post(server, req.read_bytes())
    assert status == 200 and body == good.der                   # the stored bytes are what is served
    env.run("revoke", serial, "--reason", "superseded")
    revoked = _presigned(env, serial, "revoked")
    resp = tmp / "resp5.der"
    resp.write_bytes(revoked.der)
    check = openssl("ocsp", "-respin", str(resp), "-issuer", str(env.ca_dir / "issuing.pem"), "-CAfile",
                    str(env.ca_dir / "root.pem"), "-cert", str(cert))
    assert "Response verify OK" in check.stderr + check.stdout and "Reason: superseded" in check.stdout


def _post(server, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{server.http}/ocsp", data=body, method="POST",
                                     headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.status, r.read()


def test_ocsp_get_with_caching_headers_and_pkilint(served):
    env, server, tmp = served
    cert, _ = _issue(env, tmp, "lock-2")
    req, resp = tmp / "req.der", tmp / "resp.der"
    openssl("ocsp", "-issuer", str(env.ca_dir / "issuing.pem"), "-cert", str(cert), "-no_nonce", "-reqout", str(req))
    encoded = urllib.parse.quote(base64.b64encode(req.read_bytes()).decode(), safe="")
    with urllib.request.urlopen(f"{server.http}/ocsp/{encoded}", timeout=10) as r:
        body, headers = r.read(), r.headers
    assert headers["Content-Type"] == "application/ocsp-response"
    assert "max-age=" in headers["Cache-Control"] and "public" in headers["Cache-Control"]
    assert headers["Last-Modified"] and headers["Expires"] and headers["ETag"]
    resp.write_bytes(body)
    check = openssl("ocsp", "-respin", str(resp), "-issuer", str(env.ca_dir / "issuing.pem"), "-CAfile",
                    str(env.ca_dir / "root.pem"), "-cert", str(cert))
    assert "Response verify OK" in check.stderr + check.stdout and ": good" in check.stdout
    lint = subprocess.run(["lint_ocsp_response", "lint", "-s", "WARNING", str(resp)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_unknown_serial_and_malformed_requests(served):
    env, server, _ = served
    unknown = openssl("ocsp", "-issuer", str(env.ca_dir / "issuing.pem"), "-serial", "0x01" + "ab" * 17,
                      "-url", f"{server.http}/ocsp", "-CAfile", str(env.ca_dir / "root.pem"))
    assert ": unknown" in unknown.stdout, unknown.stdout + unknown.stderr
    for body in (b"garbage", b"\x30\x82\x01\x00"):
        req = urllib.request.Request(f"{server.http}/ocsp", data=body,
                                     headers={"Content-Type": "application/ocsp-request"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.read() == b"\x30\x03\x0a\x01\x01"               # malformedRequest, unsigned
    with urllib.request.urlopen(f"{server.http}/ocsp/not%20base64", timeout=10) as r:
        assert r.read() == b"\x30\x03\x0a\x01\x01"
    # a CertID for another issuer: the root as "issuer" of the issuing CA's certificate
    other = openssl("ocsp", "-issuer", str(env.ca_dir / "root.pem"), "-cert", str(env.ca_dir / "issuing.pem"),
                    "-url", f"{server.http}/ocsp", "-CAfile", str(env.ca_dir / "root.pem"))
    assert "unauthorized" in (other.stdout + other.stderr).lower()


def test_crl_lists_revoked_and_openssl_refuses_them(served):
    env, server, tmp = served
    cert, serial = _issue(env, tmp, "lock-3")
    good, _ = _issue(env, tmp, "lock-4")
    env.run("revoke", serial, "--reason", "keyCompromise")
    der = tmp / "crl.der"
    first = env.run("crl", "generate", "--out", str(der)).stdout.decode()
    number = int(first.split("CRL ")[1].split(":")[0])
    pem = tmp / "crl.pem"
    openssl("crl", "-inform", "DER", "-in", str(der), "-out", str(pem))
    ca = env.ca_dir
    refused = openssl("verify", "-crl_check", "-CRLfile", str(pem), "-CAfile", str(ca / "root.pem"), "-untrusted",
                      str(ca / "issuing.pem"), str(cert))
    assert refused.returncode != 0 and "error 23" in refused.stdout + refused.stderr
    accepted = openssl("verify", "-crl_check", "-CRLfile", str(pem), "-CAfile", str(ca / "root.pem"), "-untrusted",
                       str(ca / "issuing.pem"), str(good))
    assert accepted.returncode == 0, accepted.stderr
    lint = subprocess.run(["lint_crl", "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(der)],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    deadline = time.monotonic() + 20                               # the server serves the newest CRL
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{server.http}/crl/issuing.crl", timeout=10) as r:
            served_der = r.read()
            assert r.headers["Content-Type"] == "application/pkix-crl"
        if served_der == der.read_bytes() or int(r.headers["ETag"].strip('"').split("-")[1]) > number:
            break
        time.sleep(1)
    second = env.run("crl", "generate").stdout.decode()
    assert int(second.split("CRL ")[1].split(":")[0]) > number          # strictly increasing


def test_decommission_revokes_every_certificate(served):
    env, server, tmp = served
    first, _ = _issue(env, tmp, "lock-9")
    second, _ = _issue(env, tmp, "lock-9")
    out = env.run("device", "decommission", "lock-9").stdout.decode()
    assert "2 certificate(s) revoked" in out
    for cert in (first, second):
        result = _ocsp(env, server, cert, "-no_nonce")
        assert ": revoked" in result.stdout and "Reason: cessationOfOperation" in result.stdout
    assert all(c["status"] == "revoked" for c in json.loads(env.run("list", "--device-id", "lock-9", "--json").stdout))
    missing = env.run("device", "decommission", "no-such-device", check=False)
    assert missing.returncode == 5


def test_serve_stops_cleanly_on_sigterm(tmp_path, database_url, serve):
    """SIGTERM (systemd, the demo) stops both listeners and exits 0, not with an internal error."""
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    server = serve(env)
    listeners = subprocess.run(["pgrep", "-g", str(server.process.pid)], capture_output=True, text=True).stdout
    server.stop()
    assert server.process.returncode == 0, server.log.read_text()[-2000:]
    assert "internal error" not in server.log.read_text()
    for port in (server.port, server.http_port):              # nothing is left listening
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    left = [pid for pid in listeners.split() if os.path.exists(f"/proc/{pid}")]
    assert not left, f"processes of serve still running: {left}"


def test_the_server_signs_audit_checkpoints_and_serves_the_newest(served):
    """Issue 14, item 10 (checkpoints): after a revocation (its CRL is published within seconds) the
    server signs the audit head with the token's audit key and serves the newest checkpoint at
    /audit/checkpoint on the HTTP listener; its signature verifies with the key it names over the
    documented message, and the chain holds the signed event with the signed hash."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    env, server, tmp = served
    _, serial = _issue(env, tmp, "lock-20")
    env.run("revoke", serial, "--reason", "superseded")
    kept_seq = int(json.loads(env.run("audit", "verify", "--json").stdout)["head"].split(":")[0])
    deadline, checkpoint = time.monotonic() + 45, None
    while time.monotonic() < deadline:
        proc = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", f"{server.http}/audit/checkpoint"],
                              capture_output=True, text=True, timeout=30)
        body, _, code = proc.stdout.rpartition("\n")
        if code == "200" and json.loads(body)["seq"] >= kept_seq:
            checkpoint = json.loads(body)
            break
        assert code in ("200", "404"), proc.stdout
        time.sleep(1)
    assert checkpoint is not None, ("no checkpoint covering the revocation within 45 s; serve log: "
                                    f"{server.log.read_text()[-3000:]}")
    message = base64.b64decode(checkpoint["message"])
    assert message == (f"device-ca audit checkpoint\nseq {checkpoint['seq']}\nhead {checkpoint['head']}\n"
                       f"at {checkpoint['at']}\n").encode()
    load_der_public_key(base64.b64decode(checkpoint["public_key"])).verify(
        base64.b64decode(checkpoint["signature"]), message, ec.ECDSA(hashes.SHA256()))   # raises if forged
    assert env.run("audit", "verify", "--expect-head", f"{checkpoint['seq']}:{checkpoint['head']}").returncode == 0
    assert json.loads(env.run("audit", "verify", "--json").stdout)["checkpoints"] >= 1
