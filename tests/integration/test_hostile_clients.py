"""Hostile clients against a running `device-ca serve` (issue 15): bodies over the limit however
they are framed, health that tells the network nothing, OCSP caches bounded in bytes, a budget
for live-signed (nonce) answers."""
from __future__ import annotations

import base64
import json
import subprocess
import urllib.request

import pytest

from integration.cli_harness import new_ca_env
from integration.est_pki import device_csr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_database_url, module_serve):
    tmp = tmp_path_factory.mktemp("hostile")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    return env, module_serve(env, "--rate-limit", "0"), tmp


def _token(env, policy, device):
    return env.run("token", "create", "--policy", policy, "--device-id", device).stdout.decode().strip()


def test_chunked_bodies_over_the_limit_are_413(served):
    """A body without Content-Length (chunked) over EST's 64 KiB is refused 413 like a declared
    one, and the bootstrap token it carried is still unused (nothing happened)."""
    env, server, tmp = served
    secret = _token(env, "badge-reader", "br-901")
    big = base64.b64encode(b"\x30" * (70 * 1024))
    for framing in (("-H", "Transfer-Encoding: chunked"), ()):
        status, body, _ = server.curl("/badge-reader/simpleenroll", "-u", f"br-901:{secret}",
                                      "-H", "Content-Type: application/pkcs10", *framing, body=big)
        assert status == 413, (framing, status, body)
    _, csr = device_csr(tmp, "br-901", "/O=BuildingCo/OU=badge-reader/CN=br-901",
                        san="URI:urn:dev:org:32473-br-901")
    status, body, _ = server.curl("/badge-reader/simpleenroll", "-u", f"br-901:{secret}",
                                  "-H", "Content-Type: application/pkcs10", body=csr)
    assert status == 200, body                                   # the token was still unused


def test_health_tells_the_network_only_ok_and_the_operator_everything(served):
    env, server, _ = served
    for url in (f"{server.http}/healthz",):
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
    status, body, _ = server.curl("/../../healthz")           # curl squashes the dots: the HTTPS /healthz
    assert status == 200 and json.loads(body) == {"status": "ok"}, body
    shown = env.run("health").stdout.decode()
    assert shown.splitlines() == ["database  ok", "hsm       ok"], shown
    broken = env.run("health", check=False, DEVICE_CA_HSM_PIN_FILE="", DEVICE_CA_HSM_PIN="not-the-pin")
    assert broken.returncode == 9, broken.stderr
    assert "hsm       unavailable:" in broken.stdout.decode() and b"PIN" in broken.stdout + broken.stderr


def _rss_of_tree(pid: int) -> int:
    """Resident bytes of a process and all its descendants (/proc)."""
    import os

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            with open(f"/proc/{current}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def _ocsp_request(env, tmp) -> bytes:
    out = tmp / "plain.req"
    subprocess.run(["openssl", "ocsp", "-issuer", str(env.ca_dir / "issuing.pem"), "-serial", "0x1234abcd",
                    "-no_nonce", "-reqout", str(out)], check=True, capture_output=True)
    return out.read_bytes()


def test_ocsp_caches_stay_bounded_in_bytes_and_critical_extensions_are_refused(served):
    """Attack (issue 15, item 2): 1,500 nonce-less requests, each made unique by a 60 KB unknown
    extension, grow the HTTP workers by less than 48 MiB (the caches key answers by CertID and
    bound themselves in bytes); a request with an unknown critical extension is malformedRequest."""
    import http.client
    import os

    from asn1crypto import ocsp as asn1_ocsp

    env, server, tmp = served
    plain = _ocsp_request(env, tmp)
    request_list = [{"req_cert": r["req_cert"]} for r in asn1_ocsp.OCSPRequest.load(plain)["tbs_request"].native[
        "request_list"]]

    def with_extension(value: bytes, critical: bool = False) -> bytes:
        return asn1_ocsp.OCSPRequest({"tbs_request": {"request_list": request_list, "request_extensions": [
            {"extn_id": "1.3.6.1.4.1.99999.7", "critical": critical, "extn_value": value}]}}).dump()

    host, port = server.http.rsplit("/", 1)[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(body: bytes) -> bytes:
        connection.request("POST", "/ocsp", body, {"Content-Type": "application/ocsp-request"})
        response = connection.getresponse()
        assert response.status == 200
        return response.read()

    for _ in range(200):
        assert len(post(plain)) > 5                              # warm: a signed answer, not an error
    for _ in range(3):
        post(with_extension(os.urandom(60_000)))
    before = _rss_of_tree(server.process.pid)
    for _ in range(1500):
        answer = post(with_extension(os.urandom(60_000)))
        assert len(answer) > 5                                   # answered (the unknown extension ignored)
    grown = _rss_of_tree(server.process.pid) - before
    assert grown < 48 * 1024 * 1024, f"the server grew by {grown / 2**20:.0f} MiB"
    assert post(with_extension(b"\x04\x02ab", critical=True)) == bytes.fromhex("3003 0a01 01".replace(" ", ""))
    connection.close()


def test_live_signing_for_nonces_has_a_budget_per_client(tmp_path, database_url, serve):
    """Attack (issue 15, item 3): one client sends nonce after nonce, each a live signature on the
    token. With `--ocsp-nonce-rate 1` (burst 2) the first answers echo the nonce; the rest come
    without it (RFC 8954), still signed by the responder and stating the status (openssl ocsp)."""
    from integration.cli_harness import openssl, openssl_csr

    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    csr = openssl_csr(tmp_path, "lock-1", "/O=BuildingCo/OU=door-lock/CN=lock-1")
    env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--out", str(tmp_path / "lock-1.pem"))
    server = serve(env, "--rate-limit", "0", "--ocsp-nonce-rate", "1")
    outputs = []
    for _ in range(8):
        proc = openssl("ocsp", "-issuer", str(env.ca_dir / "issuing.pem"), "-cert", str(tmp_path / "lock-1.pem"),
                       "-url", f"{server.http}/ocsp", "-CAfile", str(env.ca_dir / "root.pem"))
        outputs.append(proc.stdout + proc.stderr)
        assert "Response verify OK" in outputs[-1] and f"{tmp_path / 'lock-1.pem'}: good" in outputs[-1], outputs[-1]
    without = ["WARNING: no nonce in response" in o for o in outputs]
    assert not without[0] and any(without), without


def _trickle(sockets, byte: bytes, every: float, stop) -> None:
    """A thread that sends ``byte`` on every socket each ``every`` seconds until ``stop`` is set
    (a socket the server closed is skipped)."""
    import threading

    def run() -> None:
        while not stop.wait(every):
            for s in sockets:
                try:
                    s.sendall(byte)
                except OSError:
                    pass
    threading.Thread(target=run, daemon=True).start()


def test_slow_ocsp_bodies_do_not_silence_the_responder(served):
    """Attack (issue 15, item 1, HTTP listener): 50 connections send `POST /ocsp` with
    `Content-Length: 60000` and then a body byte every second. Every normal OCSP request sent
    meanwhile is answered, p99 under 200 ms; each slow client gets 408 within the request deadline
    (5 s) and is closed."""
    import http.client
    import socket
    import threading
    import time

    env, server, tmp = served
    plain = _ocsp_request(env, tmp)
    host, port = server.http.rsplit("/", 1)[1].split(":")
    slow, answers, stop = [], [], threading.Event()
    try:
        for _ in range(50):
            s = socket.create_connection((host, int(port)), timeout=10)
            s.sendall(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
                      b"Content-Length: 60000\r\n\r\n0")
            slow.append(s)

        _trickle(slow, b"0", 1.0, stop)
        latencies = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            started = time.perf_counter()
            connection = http.client.HTTPConnection(host, int(port), timeout=5)
            connection.request("POST", "/ocsp", plain, {"Content-Type": "application/ocsp-request"})
            response = connection.getresponse()
            answers.append((response.status, len(response.read())))
            connection.close()
            latencies.append(time.perf_counter() - started)
        assert all(status == 200 and size > 5 for status, size in answers), answers[:5]
        latencies.sort()
        assert len(latencies) > 20 and latencies[int(len(latencies) * 0.99) - 1] < 0.2, latencies[-5:]
        for s in slow[:5]:                                     # the slow ones are cut off at the deadline
            s.settimeout(8)
            first = s.recv(200)
            assert first.startswith(b"HTTP/1.1 408"), first
    finally:
        stop.set()
        for s in slow:
            s.close()


def test_trickled_https_headers_hit_the_request_deadline(tmp_path, database_url, serve):
    """Attack (issue 15, item 1, HTTPS listener): a client finishes the TLS handshake and then
    sends its request headers one byte a second, which the per-read idle limit alone never stops.
    With `--request-timeout 2` the server closes it within about two seconds; a normal
    `GET cacerts` is answered meanwhile."""
    import socket
    import ssl
    import time

    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    server = serve(env, "--rate-limit", "0", "--request-timeout", "2")
    context = ssl.create_default_context(cafile=str(server.chain))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    slow = context.wrap_socket(raw, server_hostname="127.0.0.1")
    started, closed_after = time.monotonic(), None
    try:
        for byte in b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 30:
            try:
                slow.sendall(bytes([byte]))
                slow.settimeout(1.0)
                if slow.recv(100) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError, OSError):
                closed_after = time.monotonic() - started
                break
    finally:
        slow.close()
    assert closed_after is not None and closed_after < 5, closed_after
    status, body, _ = server.curl("/cacerts")
    assert status == 200 and body


def test_many_trickling_tls_clients_do_not_delay_enrollment_clients(tmp_path, database_url, serve):
    """Attack (issue 15, item 1, HTTPS listener): 3 x workers x threads TLS connections (2 x 2 here,
    so 12) finish their handshakes and then send their headers a byte every 0.3 s. Every normal
    `GET cacerts` sent meanwhile is answered 200, p99 under 1 s; each slow client gets 408 and is
    closed within about the request deadline (2 s)."""
    import socket
    import ssl
    import threading
    import time

    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    server = serve(env, "--rate-limit", "0", "--request-timeout", "2", "--workers", "2", "--threads", "2")
    context = ssl.create_default_context(cafile=str(server.chain))
    slow = []
    for _ in range(3 * 2 * 2):
        s = context.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=10),
                                server_hostname="127.0.0.1")
        s.sendall(b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        slow.append(s)
    stop, replies = threading.Event(), {}

    _trickle(slow, b"a", 0.3, stop)
    started = time.monotonic()
    try:
        latencies, statuses = [], []
        while time.monotonic() - started < 2.5:
            t0 = time.perf_counter()
            status, body, _ = server.curl("/cacerts")
            latencies.append(time.perf_counter() - t0)
            statuses.append(status)
        for i, s in enumerate(slow):
            s.settimeout(4)
            first = b""
            try:
                first = s.recv(200)
            except (ConnectionError, ssl.SSLError, OSError):
                pass
            replies[i] = first
    finally:
        stop.set()
        for s in slow:
            s.close()
    assert statuses and all(status == 200 for status in statuses), statuses
    latencies.sort()
    assert latencies[max(0, int(len(latencies) * 0.99) - 1)] < 1.0, latencies[-3:]
    assert all(first.startswith(b"HTTP/1.1 408") for first in replies.values()), replies
