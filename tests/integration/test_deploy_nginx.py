"""deploy/nginx as shipped, in front of two `device-ca serve` nodes on one PostgreSQL database and
one token: EST passed through to the nodes, OCSP and CRLs proxied, healthcheck.py taking a node out
of both lists when its /healthz fails; a node killed under it costs no client an answer.

The configuration is the very file in deploy/nginx, its placeholders filled as README.md says;
healthcheck.py is run as its docstring says (--once before nginx starts, then the loop).
"""
from __future__ import annotations

import base64
import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from integration.cli_harness import openssl
from integration.est_pki import device_csr
from integration.nodes_harness import DEPLOY, Front, nginx_front, node_envs, start_nodes
from integration.server_harness import Server
from integration.tls_tools import free_port, make_pki

pytestmark = [pytest.mark.integration]

INTERVAL, FALL, TIMEOUT = 0.5, 2, 1.0      # healthcheck.py's round, failures to go down, /healthz timeout
# a dead node is marked down after at most FALL rounds (the first may start just before the death),
# each round waiting at most TIMEOUT; one second more for scheduling on a busy 2-core machine
DOWN_WITHIN = FALL * INTERVAL + TIMEOUT + 1.0


@pytest.fixture(scope="module")
def front(tmp_path_factory, module_postgres_url, module_serve):
    tmp = tmp_path_factory.mktemp("deploy-nginx")
    est_port, status_port = free_port(), free_port()
    # certificates name the balancer's status address (CRL DP, AIA), not a node's
    envs = node_envs(tmp, module_postgres_url, 2, DEVICE_CA_PUBLIC_URL=f"http://127.0.0.1:{status_port}")
    # nginx names each device in a PROXY header (HTTPS) and X-Forwarded-For (HTTP), believed from it only
    nodes = start_nodes(module_serve, envs, "--load-balancer", "127.0.0.1")
    with nginx_front(tmp, envs[0], nodes, est_port, status_port, INTERVAL, FALL, TIMEOUT) as running:
        yield running


def _enrollments(server: Server) -> float:
    """simpleenroll requests a node answered 200, from its own /metrics."""
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'^device_ca_http_requests_total\{endpoint="[^"]*simpleenroll",status="200"\} (\S+)$', text, re.M))


def _upstreams(log: Path, path_prefix: str) -> set[str]:
    return {m.group(1) for line in log.read_text().splitlines() if f'"GET {path_prefix}' in line or
            f'"POST {path_prefix}' in line for m in [re.search(r"upstream=(\S+)", line)] if m}


@pytest.mark.slow
def test_est_ocsp_and_crl_are_balanced_over_both_nodes(front, tmp_path):
    for i in range(4):
        out = front.enroll(tmp_path, f"br-{1000 + i}")
        assert out.returncode == 0, out.stderr
    assert all(_enrollments(n) >= 1 for n in front.nodes), [_enrollments(n) for n in front.nodes]
    cert = tmp_path / "br-1000.pem"
    check = openssl("x509", "-in", str(cert), "-noout", "-ext", "authorityInfoAccess,crlDistributionPoints")
    assert f"127.0.0.1:{front.status_port}/ocsp" in check.stdout, check.stdout    # the balancer, not a node

    for _ in range(4):
        good = front.ocsp(cert)
        assert "Response verify OK" in good.stdout + good.stderr and f"{cert}: good" in good.stdout, good.stderr
    # GET form: the base64 (with %2F, %2B) reaches the node as sent
    req = tmp_path / "req.der"
    openssl("ocsp", "-issuer", str(front.env.ca_dir / "issuing.pem"), "-cert", str(cert), "-no_nonce",
            "-reqout", str(req))
    encoded = urllib.parse.quote(base64.b64encode(req.read_bytes()).decode(), safe="")
    with urllib.request.urlopen(f"{front.status}/ocsp/{encoded}", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/ocsp-response"
    crl = tmp_path / "issuing.crl"
    for _ in range(4):
        with urllib.request.urlopen(f"{front.status}/crl/issuing.crl", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "application/pkix-crl"
            crl.write_bytes(r.read())
    verified = openssl("crl", "-inform", "DER", "-in", str(crl), "-CAfile", str(front.chain), "-noout")
    assert verified.returncode == 0 and "verify OK" in verified.stderr + verified.stdout, verified.stderr
    log = front.run_dir / "status-access.log"
    nodes_http = {f"127.0.0.1:{n.http_port}" for n in front.nodes}
    assert _upstreams(log, "/ocsp") == nodes_http and _upstreams(log, "/crl/") == nodes_http

    # per-node endpoints are not offered through the balancer
    for path in ("/metrics", "/healthz"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{front.status}{path}", timeout=10)
        assert refused.value.code == 404


@pytest.mark.slow
def test_a_client_certificate_header_through_the_balancer_is_not_believed(front, tmp_path):
    """Attack: a client without the device's key sends the device's certificate in the header a
    terminating proxy would use. Passed through, the TLS session is the client's own: no header is
    believed (the nodes run without --client-cert-header/--trusted-proxy, as README.md says)."""
    out = front.enroll(tmp_path, "br-2000")
    assert out.returncode == 0, out.stderr
    victim = tmp_path / "br-2000.pem"
    _, renew = device_csr(tmp_path, "attacker", "/O=BuildingCo/OU=badge-reader/CN=br-2000")
    forged = urllib.parse.quote(victim.read_text())
    for header in ("X-SSL-Client-Cert", "X-Client-Cert", "SSL_CLIENT_CERT", "X-Forwarded-Client-Cert"):
        proc = subprocess.run(
            ["curl", "-s", "-w", "\n%{http_code}", "--cacert", str(front.chain), "-H", f"{header}: {forged}",
             "-H", "Content-Type: application/pkcs10", "--data-binary", "@-",
             f"https://127.0.0.1:{front.est_port}/.well-known/est/badge-reader/simplereenroll"],
            input=renew, capture_output=True, timeout=60)
        body, _, status = proc.stdout.rpartition(b"\n")
        assert int(status) == 401, (header, status, body)
    listed = json.loads(front.env.run("list", "--device-id", "br-2000", "--json").stdout)
    assert len(listed) == 1


@pytest.mark.slow
def test_a_killed_node_is_taken_out_and_clients_keep_their_answers(front, tmp_path):
    """SIGKILL of a node, both listeners. With healthcheck.py paused, nginx's passive checks alone
    carry every request to the live node (each refusal logged, the request passed on); resumed, the
    checker marks the node down in both lists within DOWN_WITHIN seconds and reloads nginx, which
    then no longer tries it at all. EST, OCSP and CRL answer 200 throughout."""
    out = front.enroll(tmp_path, "br-3000")
    assert out.returncode == 0, out.stderr
    cert = tmp_path / "br-3000.pem"
    req = tmp_path / "req-3000.der"
    openssl("ocsp", "-issuer", str(front.env.ca_dir / "issuing.pem"), "-cert", str(cert), "-no_nonce",
            "-reqout", str(req))
    ocsp_get = f"{front.status}/ocsp/{urllib.parse.quote(base64.b64encode(req.read_bytes()), safe='')}"
    dead, live = front.nodes[1], front.nodes[0]
    reloads = front.checker_log.read_text().count("reloaded")

    front.checker.send_signal(signal.SIGSTOP)
    try:
        dead.kill()
        for _ in range(6):                 # round robin offers the dead node half of these
            assert _get(front, f"https://127.0.0.1:{front.est_port}/.well-known/est/cacerts") == 200
            assert _get(front, ocsp_get) == 200
        assert _refusals(front, dead) > 0, "the dead node was never offered a request"
        out = front.enroll(tmp_path, "br-3001")
        assert out.returncode == 0, out.stderr
    finally:
        front.checker.send_signal(signal.SIGCONT)
    resumed = time.monotonic()

    while not all(f"127.0.0.1:{p} max_fails=2 fail_timeout=10s down;" in front.lines(kind)
                  for kind, p in (("est", dead.port), ("status", dead.http_port))):
        assert time.monotonic() - resumed < DOWN_WITHIN, front.checker_log.read_text()
        time.sleep(0.05)
    marked = time.monotonic() - resumed
    assert f"127.0.0.1:{live.port} max_fails=2 fail_timeout=10s;" in front.lines("est")
    assert f"127.0.0.1:{live.http_port} max_fails=2 fail_timeout=10s;" in front.lines("status")
    while front.checker_log.read_text().count("reloaded") == reloads:
        assert time.monotonic() - resumed < DOWN_WITHIN + 2, front.checker_log.read_text()
        time.sleep(0.05)
    time.sleep(0.5)                  # the new workers take over from the old ones
    refused_before = _refusals(front, dead)

    for i in range(2, 5):
        out = front.enroll(tmp_path, f"br-{3000 + i}")
        assert out.returncode == 0, out.stderr
        good = front.ocsp(cert)
        assert f"{cert}: good" in good.stdout, good.stderr
        assert _get(front, f"{front.status}/crl/issuing.crl") == 200
    assert _refusals(front, dead) == refused_before, front.nginx.log_tail()
    print(f"killed node marked down {marked:.2f} s after the checker resumed (bound {DOWN_WITHIN:.1f} s)")


def _get(front: Front, url: str) -> int:
    """Status of a GET on a new connection (the EST port verified against the CA chain)."""
    context = ssl.create_default_context(cafile=str(front.chain)) if url.startswith("https:") else None
    with urllib.request.urlopen(url, timeout=10, context=context) as r:
        r.read()
        return r.status


def _refusals(front: Front, node: Server) -> int:
    text = front.nginx.error_log.read_text(errors="replace")
    return sum(text.count(f'upstream: "{scheme}127.0.0.1:{port}') + text.count(f"upstream: \"127.0.0.1:{port}\"")
               for scheme, port in (("http://", node.http_port), ("", node.port)))


# -- healthcheck.py on its own: a node that answers, but unhealthy -------------------------------

class _Health(BaseHTTPRequestHandler):
    code = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b'{"status": "ok"}' if self.code == 200 else b'{"status": "unavailable"}'
        self.send_response(self.code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _listener(code: int, context: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    handler = type(f"Health{code}", (_Health,), {"code": code})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_healthcheck_marks_a_node_whose_healthz_fails_down_and_keeps_one_line_per_node(tmp_path):
    """A node that still answers but whose /healthz says 503 (database or token lost) goes down in
    both lists; a node with one bad listener goes down in that list only; all failing: none down."""
    pki = make_pki(tmp_path / "pki")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki.server_chain, pki.server_key)
    servers = {name: (_listener(https, tls), _listener(http))
               for name, (https, http) in {"good": (200, 200), "sick": (503, 503), "half": (200, 503)}.items()}
    try:
        spec = {name: f"127.0.0.1:{s.server_address[1]}:{p.server_address[1]}" for name, (s, p) in servers.items()}
        run_dir = tmp_path / "run"
        proc = subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py"), "--run-dir", str(run_dir), "--once",
                               "--cafile", str(pki.ca_cert), *[a for v in spec.values() for a in ("--node", v)]],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        est, status = (run_dir / "upstream-est.conf").read_text(), (run_dir / "upstream-status.conf").read_text()
        port = {name: (s.server_address[1], p.server_address[1]) for name, (s, p) in servers.items()}
        assert f"127.0.0.1:{port['good'][0]} max_fails=2 fail_timeout=10s;" in est
        assert f"127.0.0.1:{port['sick'][0]} max_fails=2 fail_timeout=10s down;" in est
        assert f"127.0.0.1:{port['half'][0]} max_fails=2 fail_timeout=10s;" in est
        assert f"127.0.0.1:{port['good'][1]} max_fails=2 fail_timeout=10s;" in status
        assert f"127.0.0.1:{port['sick'][1]} max_fails=2 fail_timeout=10s down;" in status
        assert f"127.0.0.1:{port['half'][1]} max_fails=2 fail_timeout=10s down;" in status

        proc = subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py"), "--run-dir", str(run_dir), "--once",
                               "--node", spec["sick"]], capture_output=True, text=True, timeout=30)
        assert " down;" not in (run_dir / "upstream-est.conf").read_text()       # every node failing
    finally:
        for pair in servers.values():
            for server in pair:
                server.shutdown()
                server.server_close()
