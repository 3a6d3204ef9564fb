#!/usr/bin/env python3
"""Normal load while hostile clients run, against the same `device-ca serve`, in the same run:
OCSP (wrk, 4 keep-alive connections, a cached `good` answer) and EST `GET cacerts` (loadgen, 4
keep-alive TLS clients), first alone, then while these run on loopback (bounded in count and
time, stopped when the measurement ends):

    slow-body     50 connections: POST /ocsp, Content-Length 60000, one body byte a second
    slow-header   3 x workers x threads TLS connections sending their headers a byte a second
                  (reconnecting when closed)
    oversized     2 clients posting 70 KiB bodies to /ocsp and to EST simpleenroll
    garbage       2 clients sending random bytes to both ports

Prints each normal load's throughput and p99 without and with the abuse, and their ratio.

    python3 benchmarks/abuse_bench.py [--seconds 10] [--workers 2 --threads 8]
"""
from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import ocsp_peers  # noqa: E402
from bench_env import temp_softhsm  # noqa: E402
from loadgen import run_load  # noqa: E402


class Abuse:
    """The hostile clients, each a daemon thread that stops when ``stop`` is set."""

    def __init__(self, http_port: int, https_port: int, cafile: Path, slow_tls: int):
        self.http_port, self.https_port, self.cafile, self.slow_tls = http_port, https_port, cafile, slow_tls
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.counts = {"slow-body": 0, "slow-header": 0, "oversized": 0, "garbage": 0}

    def start(self) -> None:
        for target, n in ((self._slow_body, 50), (self._slow_header, self.slow_tls), (self._oversized, 2),
                          (self._garbage, 2)):
            for _ in range(n):
                t = threading.Thread(target=target, daemon=True)
                t.start()
                self.threads.append(t)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)

    def _trickle(self, make, head: bytes, kind: str) -> None:
        while not self.stop.is_set():
            try:
                s = make()
                self.counts[kind] += 1
                for byte in head:
                    if self.stop.wait(1.0):
                        break
                    s.sendall(bytes([byte]))
                s.close()
            except OSError:
                self.stop.wait(0.2)

    def _slow_body(self) -> None:
        head = b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n"
        def make():
            s = socket.create_connection(("127.0.0.1", self.http_port), timeout=10)
            s.sendall(head)
            return s
        self._trickle(make, b"0" * 60000, "slow-body")

    def _slow_header(self) -> None:
        context = ssl.create_default_context(cafile=str(self.cafile))
        def make():
            return context.wrap_socket(socket.create_connection(("127.0.0.1", self.https_port), timeout=10),
                                       server_hostname="127.0.0.1")
        self._trickle(make, b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200,
                      "slow-header")

    def _oversized(self) -> None:
        context = ssl.create_default_context(cafile=str(self.cafile))
        body = os.urandom(70 * 1024)
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=5) as s:
                    s.sendall(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    s.recv(100)
                with context.wrap_socket(socket.create_connection(("127.0.0.1", self.https_port), timeout=5),
                                         server_hostname="127.0.0.1") as s:
                    s.sendall(b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: x\r\nContent-Type: "
                              b"application/pkcs10\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    s.recv(100)
                self.counts["oversized"] += 2
            except OSError:
                self.stop.wait(0.1)

    def _garbage(self) -> None:
        while not self.stop.is_set():
            for port in (self.http_port, self.https_port):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                        s.sendall(os.urandom(2048))
                        s.recv(100)
                    self.counts["garbage"] += 1
                except OSError:
                    pass
            self.stop.wait(0.05)


def measure(server, request: bytes, seconds: float) -> dict:
    ocsp = ocsp_peers.wrk_ocsp(f"{server.http}/ocsp", request, seconds=seconds)
    est = run_load(f"{server.est}/cacerts", method="GET", cacert=server.chain, concurrency=4, seconds=seconds,
                   new_connection=False, timeout=10)
    return {"ocsp": ocsp, "est": est}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="abuse-bench-") as tmp:
        work = Path(tmp)
        temp_softhsm(work)
        from cryptography import x509

        from integration.cli_harness import new_ca_env, openssl_csr
        from integration.server_harness import start_server

        env = new_ca_env(work, f"sqlite:///{work / 'device-ca.db'}")
        env.run("init", "--organization", "BuildingCo")
        csr = openssl_csr(work, "lock-1", "/O=BuildingCo/OU=door-lock/CN=lock-1")
        env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--out", str(work / "lock-1.pem"))
        leaf = x509.load_pem_x509_certificate((work / "lock-1.pem").read_bytes())
        issuer = x509.load_pem_x509_certificate((env.ca_dir / "issuing.pem").read_bytes())
        request = ocsp_peers.ocsp_request_der(leaf, issuer)
        server = start_server(env, "--rate-limit", "0", "--workers", str(args.workers), "--threads", str(args.threads))
        try:
            calm = measure(server, request, args.seconds)
            abuse = Abuse(server.http_port, server.port, server.chain, 3 * args.workers * args.threads)
            abuse.start()
            time.sleep(2)                                  # the slow clients are in place
            try:
                hostile = measure(server, request, args.seconds)
            finally:
                abuse.finish()
        finally:
            server.stop()
    print(f"abuse: {', '.join(f'{k} {v}' for k, v in abuse.counts.items())} connections/requests")
    for name, unit in (("ocsp", "OCSP POST (wrk, 4 conns)"), ("est", "EST GET cacerts (4 TLS clients)")):
        a, b = calm[name], hostile[name]
        rate_a = a.get("rps", 0.0) if name == "ocsp" else a["ok_rps"]
        rate_b = b.get("rps", 0.0) if name == "ocsp" else b["ok_rps"]
        print(f"{unit:<34} alone {rate_a:>9,.0f}/s p99 {a['p99_ms']:>8.1f} ms   under abuse {rate_b:>9,.0f}/s "
              f"p99 {b['p99_ms']:>8.1f} ms   ratio {rate_b / rate_a if rate_a else 0:.2f}"
              + (f"   errors {b.get('errors', 0)}" if name == "est" else f"   non-2xx {b.get('non2xx', 0)}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
