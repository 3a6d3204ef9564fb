"""EST under faults: the token disappears, the database goes away, workers are killed, a client floods."""
from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from integration.cli_harness import new_ca_env
from integration.est_pki import device_csr, pkcs7_certificates, simpleenroll

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _token_dir(label: str) -> Path:
    root = Path(os.environ["DEVICE_CA_TEST_SOFTHSM_DIR"]) / "tokens"
    padded = label.encode().ljust(32)
    for candidate in root.iterdir():
        marker = candidate / "token.object"
        if marker.is_file() and padded in marker.read_bytes():
            return candidate
    raise LookupError(label)


def _enroll(server, env, tmp, device, policy="badge-reader", extra=()):
    secret = env.run("token", "create", "--policy", policy, "--device-id", device).stdout.decode().strip()
    return simpleenroll(server, tmp, device, secret, policy, extra)


def _list(env, *args):
    return json.loads(env.run("list", "--json", *args).stdout)


@pytest.fixture
def served(tmp_path, database_url, serve):
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    return env, serve(env, "--rate-limit", "0")


def test_hsm_unavailable_gives_503_and_nothing_issued(served, tmp_path):
    env, server = served
    assert _enroll(server, env, tmp_path, "br-1")[0] == 200
    token_dir = _token_dir(env.token)
    hidden = token_dir.parent.parent / f"{token_dir.name}.away"     # outside the token directory
    token_dir.rename(hidden)
    try:
        # SoftHSM may keep signing with key material it already holds; workers started now cannot
        # find the token at all, which is the outage a restarted server meets.
        os.kill(server.process.pid, signal.SIGHUP)
        time.sleep(4)
        for i in range(6):                                        # whichever worker answers
            status, data, headers = _enroll(server, env, tmp_path, f"br-2{i}")
            assert status == 503 and headers["retry-after"] == "30", data
            assert b"signing service unavailable" in data
            assert _list(env, "--device-id", f"br-2{i}") == []
    finally:
        hidden.rename(token_dir)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:              # the workers open the token once it is back
        status, data, _ = _enroll(server, env, tmp_path, f"br-9{int(time.monotonic() * 1000) % 10**5}")
        if status == 200:
            break
        time.sleep(1)
    assert status == 200, data
    assert not {c["device_id"] for c in _list(env)} & {f"br-2{i}" for i in range(6)}


def test_database_unavailable_gives_503(tmp_path, serve):
    from pg import PG_ADMIN_URL, postgres_database

    with postgres_database() as url:
        env = new_ca_env(tmp_path, url)
        env.run("init", "--organization", "BuildingCo")
        server = serve(env, "--rate-limit", "0")
        name = sa.engine.make_url(url).database
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            status, data, _ = _enroll(server, env, tmp_path, "br-1")
            assert status == 200
            ocsp_request = _ocsp_request(pkcs7_certificates(data)[0], env.ca_dir / "issuing.pem")
            assert _ocsp_status(server, ocsp_request) == "SUCCESSFUL"
            secret = env.run("token", "create", "--policy", "badge-reader", "--device-id", "br-3").stdout.decode().strip()
            _, body = device_csr(tmp_path, "br-3", "/O=BuildingCo/OU=badge-reader/CN=br-3")
            with admin.connect() as c:
                c.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                c.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            status, data, headers = server.curl("/badge-reader/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                                "-u", f"br-3:{secret}", body=body)
            assert status == 503 and headers["retry-after"] == "30" and b"database unavailable" in data, \
                server.log.read_text()[-3000:]
            assert _ocsp_status(server, ocsp_request) == "TRY_LATER"     # relying parties: try later, not an error
            with admin.connect() as c:
                c.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            status, data, _ = server.curl("/badge-reader/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                          "-u", f"br-3:{secret}", body=body)
            assert status == 200, data                       # the token was not burnt by the outage
            assert len(_list(env, "--device-id", "br-3")) == 1
        finally:
            server.stop()
            with admin.connect() as c:
                c.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            admin.dispose()


def _ocsp_request(certificate, issuer_pem: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509 import ocsp

    issuer = x509.load_pem_x509_certificate(issuer_pem.read_bytes())
    return ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1()).build().public_bytes(
        Encoding.DER)


def _ocsp_status(server, request: bytes) -> str:
    """POST /ocsp on the plain-HTTP listener with curl; the OCSPResponseStatus's name."""
    from cryptography.x509 import ocsp

    proc = subprocess.run(["curl", "-s", "--max-time", "30", "-H", "Content-Type: application/ocsp-request",
                           "--data-binary", "@-", f"{server.http}/ocsp"], input=request, capture_output=True,
                          timeout=60)
    return ocsp.load_der_ocsp_response(proc.stdout).response_status.name


FAILPOINTS = ["after-reserve:kill", "sign:hsm-error", "after-sign:kill", "before-record:kill", "record:db-error"]


@pytest.mark.parametrize("failpoint", FAILPOINTS)
def test_each_step_of_issuance_interrupted(tmp_path, database_url, failpoint, serve):
    """The pipeline stopped at each step for the devices br-9* (a worker SIGKILLed, the token or the
    database failing exactly there), every time, while other devices enroll around them: what was
    answered is recorded and good; what was interrupted is a reservation that `reconcile` lists and
    never a good certificate; the audit chain verifies."""
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    env.extra.update({"DEVICE_CA_FAILPOINT": f"{failpoint}:br-9*", "DEVICE_CA_TEST_FAILPOINTS": "1"})
    server = serve(env, "--rate-limit", "0", "--workers", "2", "--threads", "1")
    answers = {d: _enroll(server, env, tmp_path, d) for d in ("br-1", "br-90", "br-2", "br-91", "br-3")}
    server.stop()
    for device in ("br-1", "br-2", "br-3"):
        status, data, _ = answers[device]
        assert status == 200, (device, data, server.log.read_text()[-3000:])
        (cert,) = pkcs7_certificates(data)
        assert cert.subject.rfc4514_string().startswith(f"CN={device},")
    for device in ("br-90", "br-91"):
        status, data, headers = answers[device]
        if failpoint.endswith(":kill"):
            assert status in (0, 502), (device, status, data)          # the worker died: no answer
        else:
            assert status == 503 and headers["retry-after"] == "30", (device, status, data)
            assert (b"signing service" if "hsm" in failpoint else b"database") in data
    env.extra.pop("DEVICE_CA_FAILPOINT")
    good = {c["device_id"]: c for c in _list(env, "--status", "good", "--policy", "badge-reader")}
    assert set(good) == {"br-1", "br-2", "br-3"}
    assert _list(env, "--device-id", "br-90") == [] and _list(env, "--device-id", "br-91") == []
    reserved = json.loads(env.run("reconcile", "--json", "--older-than", "0").stdout)
    assert sorted(r["device_id"] for r in reserved) == ["br-90", "br-91"]
    for reservation in reserved:                                    # interrupted: reserved, never good
        assert env.run("show", reservation["serial"], check=False).returncode == 5
    assert json.loads(env.run("audit", "verify", "--json").stdout)["ok"]


def test_failpoints_are_refused_outside_tests(tmp_path):
    env = new_ca_env(tmp_path, f"sqlite:///{tmp_path / 'ca.db'}")
    env.run("init", "--organization", "BuildingCo")
    env.extra["DEVICE_CA_FAILPOINT"] = "after-sign:kill"
    proc = subprocess.run([sys.executable, "-m", "device_ca.cli.main", "serve", "--port", "0"], env=env.env,
                          cwd=env.home, capture_output=True, timeout=60)
    assert proc.returncode == 3 and b"DEVICE_CA_TEST_FAILPOINTS" in proc.stderr, proc.stderr
    assert not (env.home / "tls" / "server.pem").exists()         # refused before anything started


def test_rate_limit_per_client(tmp_path, database_url, serve):
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    server = serve(env, "--rate-limit", "1", "--workers", "4", "--threads", "1")
    start = time.monotonic()
    statuses = [server.curl("/cacerts")[0] for _ in range(12)]
    elapsed = time.monotonic() - start
    assert 429 in statuses and statuses[0] == 200
    # burst 2, then 1/s, whichever of the 4 workers answers (each with its own buckets: up to 8 at once)
    assert statuses.count(200) <= 2 + int(elapsed) + 1, (statuses, elapsed)
    status, _, headers = server.curl("/cacerts")
    assert status == 429 and int(headers["retry-after"]) >= 1
    other = server.curl("/cacerts", "--interface", "127.0.0.2")      # another client is not affected
    assert other[0] == 200


def _closed_by_server(sock: socket.socket, within: float) -> float:
    """Seconds until the server closes ``sock`` (EOF or reset); fails after ``within``."""
    start = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept a silent connection open for {within} s")
    return time.monotonic() - start


def test_stalled_clients_are_cut_off(tmp_path, serve):
    """Half a ClientHello, half a request after the handshake, half a second request on a kept-alive
    connection: each holds one of the server's threads until its limit, then is closed, and the
    server answers others again (two such clients used to stop a 1x2 server for good)."""
    env = new_ca_env(tmp_path, f"sqlite:///{tmp_path / 'ca.db'}")
    env.run("init", "--organization", "BuildingCo")
    server = serve(env, "--workers", "1", "--threads", "2", "--handshake-timeout", "1.5",
                   "--idle-timeout", "2.5", "--rate-limit", "0")
    tls = ssl.create_default_context(cafile=str(server.chain))
    half_hello = socket.create_connection(("127.0.0.1", server.port))
    half_hello.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")     # a ClientHello's first bytes
    half_request = tls.wrap_socket(socket.create_connection(("127.0.0.1", server.port)),
                                   server_hostname="127.0.0.1")
    half_request.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    handshake_cut = _closed_by_server(half_hello, within=8)
    request_cut = _closed_by_server(half_request, within=8)
    assert 1.0 <= handshake_cut <= 4, handshake_cut
    assert 2.0 <= handshake_cut + request_cut <= 6, request_cut       # its limit started with the handshake
    status, _, _ = server.curl("/cacerts", "--max-time", "5")
    assert status == 200

    kept = tls.wrap_socket(socket.create_connection(("127.0.0.1", server.port)), server_hostname="127.0.0.1")
    kept.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    kept.settimeout(5)
    assert kept.recv(12) == b"HTTP/1.1 200"
    time.sleep(0.5)                                  # the rest of the answer; then half a second request
    kept.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\n")
    cut = _closed_by_server(kept, within=10)
    assert cut <= 6, cut
    assert server.curl("/cacerts", "--max-time", "5")[0] == 200
    server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
