"""EST under faults: the token disappears, the database goes away, workers are killed, a client floods."""
from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from integration.cli_harness import make_tokens, new_ca_env
from integration.est_pki import device_csr, pkcs7_certificates
from integration.server_harness import start_server

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
    _, body = device_csr(tmp, device, f"/O=BuildingCo/OU={policy}/CN={device}")
    return server.curl(f"/{policy}/simpleenroll", "-H", "Content-Type: application/pkcs10", "-u", f"{device}:{secret}",
                       *extra, body=body)


def _list(env, *args):
    return json.loads(env.run("list", "--json", *args).stdout)


@pytest.fixture
def served(tmp_path, database_url):
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    server = start_server(env, "--rate-limit", "0")
    yield env, server
    server.stop()


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


def test_database_unavailable_gives_503(tmp_path):
    from pg import PG_ADMIN_URL, postgres_database

    with postgres_database() as url:
        env = new_ca_env(tmp_path, url)
        env.run("init", "--organization", "BuildingCo")
        server = start_server(env, "--rate-limit", "0")
        name = sa.engine.make_url(url).database
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            assert _enroll(server, env, tmp_path, "br-1")[0] == 200
            secret = env.run("token", "create", "--policy", "badge-reader", "--device-id", "br-3").stdout.decode().strip()
            _, body = device_csr(tmp_path, "br-3", "/O=BuildingCo/OU=badge-reader/CN=br-3")
            with admin.connect() as c:
                c.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                c.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            status, data, headers = server.curl("/badge-reader/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                                "-u", f"br-3:{secret}", body=body)
            assert status == 503 and headers["retry-after"] == "30" and b"database unavailable" in data, \
                server.log.read_text()[-3000:]
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


def _https_workers(server_pid: int) -> list[int]:
    """Direct children of the HTTPS arbiter that have no children (the HTTP arbiter has its workers)."""
    def children(pid):
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except FileNotFoundError:
            return []
    return [p for p in children(server_pid) if not children(p)]


def test_killed_workers_leave_no_half_issued_certificate(served, tmp_path):
    env, server = served
    devices = [f"br-{i}" for i in range(400, 430)]
    secrets_ = make_tokens(env, "badge-reader", devices)
    bodies = {d: device_csr(tmp_path, d, f"/O=BuildingCo/OU=badge-reader/CN={d}")[1] for d in devices}

    def attempt(device):
        return server.curl("/badge-reader/simpleenroll", "-H", "Content-Type: application/pkcs10",
                           "-u", f"{device}:{secrets_[device]}", body=bodies[device])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(attempt, d): d for d in devices}
        time.sleep(0.3)
        while not all(f.done() for f in futures):       # warm workers enroll 30 devices in well under a second
            for pid in _https_workers(server.process.pid):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.7)
        results = {futures[f]: f.result() for f in futures}
    answered = {d for d, (status, _, _) in results.items() if status == 200}
    for device, (status, data, _) in results.items():
        if status == 200:
            (cert,) = pkcs7_certificates(data)
            assert cert.subject.rfc4514_string().startswith(f"CN={device},")
    good = _list(env, "--status", "good", "--policy", "badge-reader")
    assert len(good) == len({c["device_id"] for c in good})          # never two certificates for one device
    assert answered <= {c["device_id"] for c in good}               # every answered certificate is recorded
    for record in good:                                             # every good row is a whole certificate
        pem = env.run("show", record["serial"], "--pem").stdout
        assert pem.startswith(b"-----BEGIN CERTIFICATE-----")
    for reservation in json.loads(env.run("reconcile", "--json").stdout):   # interrupted: reserved, never good
        assert env.run("show", reservation["serial"], check=False).returncode == 5
    assert json.loads(env.run("audit", "verify", "--json").stdout)["ok"]
    assert len(answered) < len(devices), "the kills hit no request; the test proved nothing"


def test_rate_limit_per_client(tmp_path, database_url):
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    server = start_server(env, "--rate-limit", "1", "--workers", "4", "--threads", "1")
    try:
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
    finally:
        server.stop()


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


def test_stalled_clients_are_cut_off(tmp_path):
    """Half a ClientHello, half a request after the handshake, half a second request on a kept-alive
    connection: each holds one of the server's threads until its limit, then is closed, and the
    server answers others again (two such clients used to stop a 1x2 server for good)."""
    env = new_ca_env(tmp_path, f"sqlite:///{tmp_path / 'ca.db'}")
    env.run("init", "--organization", "BuildingCo")
    server = start_server(env, "--workers", "1", "--threads", "2", "--handshake-timeout", "1.5",
                          "--idle-timeout", "2.5", "--rate-limit", "0")
    tls = ssl.create_default_context(cafile=str(server.chain))
    try:
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
    finally:
        server.stop()
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
