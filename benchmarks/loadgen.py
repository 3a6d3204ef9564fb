#!/usr/bin/env python3
"""HTTPS load generator with TLS client certificates and a new TLS connection per request.

Why this and not a C tool: none of the Debian tools at hand presents a client certificate while
driving HTTP load. wrk 4.1 has no certificate option (its Lua API cannot reach the TLS context),
h2load (nghttp2-client 1.52) neither, ab (apache2-utils) neither; `openssl s_time -new -cert`
does mTLS handshakes but sends only a fixed GET and has no concurrency; curl per request costs a
process. So this module drives the load from Python's `ssl` (OpenSSL 3.0, the same library the
server side uses): worker processes (one per core by default) each run threads, and OpenSSL
releases the GIL during handshakes, reads and writes. Each request is its own TCP + TLS
connection (full handshake, no session resumption) unless new_connection=False.

The client's own cost is reported (`client_cpu_s`) so a caller can tell whether the generator or
the server was the bottleneck: on a 2-core machine, a client at a mutual-TLS handshake costs
about as much CPU as the server's side of it.

    from loadgen import run_load
    result = run_load("https://127.0.0.1:8443/.well-known/est/simpleenroll",
                      requests=[({"Authorization": "Basic ...", "Content-Type": "application/pkcs10"},
                                 csr_b64) for ...],           # each used at most once
                      cert="client.pem", key="client.key", cacert="ca.pem")

    python3 benchmarks/loadgen.py URL --cacert ca.pem [--cert c.pem --key c.key] [-c 16] [-d 10]
                                  [--body-size 400] [--keepalive]
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from typing import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

Item = tuple[Mapping[str, str], bytes]


class _Reader:
    """Minimal HTTP/1.1 response reader over a (TLS) socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def _until(self, marker: bytes) -> bytes:
        while (i := self.buf.find(marker)) < 0:
            if not self._fill():
                raise ConnectionError("connection closed before the end of the response head")
        out = bytes(self.buf[:i])
        del self.buf[:i + len(marker)]
        return out

    def _exactly(self, n: int) -> None:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("connection closed inside the response body")
        del self.buf[:n]

    def response(self, head_request: bool = False) -> tuple[int, bool]:
        """Read one response; return (status, server keeps the connection open)."""
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        version, status = head[0].split(" ", 2)[:2]
        status = int(status)
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        keep = fields.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        if head_request or status in (204, 304) or 100 <= status < 200:
            return status, keep
        if "chunked" in fields.get("transfer-encoding", "").lower():
            while True:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self._until(b"\r\n"):   # trailers up to the empty line
                        pass
                    break
                self._exactly(size + 2)
        elif "content-length" in fields:
            self._exactly(int(fields["content-length"]))
        else:
            while self._fill():
                pass
            self.buf.clear()
            keep = False
        return status, keep


def _request_bytes(method: str, path: str, host: str, headers: Mapping[str, str], body: bytes,
                   close: bool) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    names = {k.lower() for k in headers}
    if body or method in ("POST", "PUT", "PATCH"):
        if "content-length" not in names:
            lines.append(f"Content-Length: {len(body)}")
    if "connection" not in names:
        lines.append("Connection: close" if close else "Connection: keep-alive")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _worker(proc_index: int, spec: dict, items: list[Item] | None, barrier, out) -> None:
    """One process: spec['threads'] threads sharing this process's slice of the items."""
    url = urlsplit(spec["url"])
    tls = url.scheme == "https"
    host, port = url.hostname, url.port or (443 if tls else 80)
    host_header = url.netloc
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    ctx = None
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if spec["cacert"]:
            ctx.load_verify_locations(spec["cacert"])
        else:
            ctx.load_default_certs()
        if spec["cert"]:
            ctx.load_cert_chain(spec["cert"], spec["key"])
    close = spec["new_connection"]
    method = spec["method"]
    if items is None:
        fixed = _request_bytes(method, path, host_header, spec["headers"], spec["body"], close)
        source = itertools.repeat(fixed)
    else:
        source = (_request_bytes(method, path, host_header, h, b, close) for h, b in items)
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    exhausted = threading.Event()

    def connect():
        sock = socket.create_connection((host, port), timeout=spec["timeout"])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname=host)
        return sock

    def run(deadline: float) -> None:
        lat, st, err = [], Counter(), Counter()
        sock = reader = None
        while time.monotonic() < deadline:
            with lock:
                data = next(source, None)
            if data is None:
                exhausted.set()
                break
            t0 = time.perf_counter()
            for attempt in (0, 1):
                fresh = sock is None
                try:
                    if fresh:
                        sock = connect()
                        reader = _Reader(sock)
                    sock.sendall(data)
                    status, keep = reader.response(method == "HEAD")
                except (OSError, ValueError, ConnectionError) as exc:
                    if sock is not None:
                        sock.close()
                    sock = None
                    if not fresh and attempt == 0:
                        continue          # a kept-alive connection the server had closed
                    err[f"{type(exc).__name__}: {exc}"[:160]] += 1
                    break
                lat.append(time.perf_counter() - t0)
                st[status] += 1
                if close or not keep:
                    sock.close()
                    sock = None
                break
        if sock is not None:
            sock.close()
        with lock:
            latencies.extend(lat)
            statuses.update(st)
            errors.update(err)

    barrier.wait()
    cpu0, start = time.process_time(), time.monotonic()
    deadline = start + spec["seconds"]
    threads = [threading.Thread(target=run, args=(deadline,), daemon=True) for _ in range(spec["threads"][proc_index])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put({"latencies": latencies, "statuses": dict(statuses), "errors": dict(errors),
             "start": start, "end": time.monotonic(), "cpu": time.process_time() - cpu0,
             "exhausted": exhausted.is_set()})


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


def run_load(url: str, body: bytes = b"", headers: Mapping[str, str] | None = None,
             cert: str | os.PathLike | None = None, key: str | os.PathLike | None = None,
             cacert: str | os.PathLike | None = None, concurrency: int = 16, seconds: float = 10,
             new_connection: bool = True, *, requests: Iterable[Item] | None = None,
             method: str = "POST", processes: int | None = None, timeout: float = 10.0) -> dict:
    """Drive `url` with `concurrency` clients for `seconds`; every request on a new TLS connection
    unless new_connection=False (then each client keeps its connection alive).

    Either one fixed request (`headers`, `body`) sent over and over, or `requests`: a sequence of
    (headers, body) pairs, each sent at most once, in order; the run then also ends when they are
    used up (`exhausted` in the result). A latency runs from connect (or send, on a kept-alive
    connection) to the last byte of the response. Counted in `rps` is every response with an
    HTTP status, whatever the status; `ok_rps` counts 2xx only; `errors` counts requests that got
    no response (connect/TLS/timeout/reset), with up to five messages in `error_samples`.
    """
    processes = processes or min(os.cpu_count() or 1, concurrency)
    per_proc = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    spec = {"url": url, "body": body, "headers": dict(headers or {}), "method": method.upper(),
            "cert": str(cert) if cert else None, "key": str(key) if key else None,
            "cacert": str(cacert) if cacert else None, "seconds": seconds, "timeout": timeout,
            "new_connection": new_connection, "threads": per_proc}
    slices: list[list[Item] | None] = [None] * processes
    if requests is not None:
        items = list(requests)
        # Round-robin over the processes so the slices drain at about the same pace.
        slices = [items[i::processes] for i in range(processes)]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(processes + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, spec, slices[i], barrier, out), daemon=True)
             for i in range(processes)]
    for p in procs:
        p.start()
    barrier.wait(timeout=60)
    results = [out.get(timeout=seconds + timeout + 60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    latencies = sorted(itertools.chain.from_iterable(r["latencies"] for r in results))
    statuses: Counter = Counter()
    errors: Counter = Counter()
    for r in results:
        statuses.update({int(k): v for k, v in r["statuses"].items()})
        errors.update(r["errors"])
    duration = max(r["end"] for r in results) - min(r["start"] for r in results)
    done = sum(statuses.values())
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    return {
        "rps": done / duration if duration else 0.0,
        "ok_rps": ok / duration if duration else 0.0,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p90_ms": _percentile(latencies, 0.90) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "max_ms": (latencies[-1] * 1000) if latencies else float("nan"),
        "requests": done,
        "errors": sum(errors.values()),
        "error_samples": [m for m, _ in errors.most_common(5)],
        "statuses": dict(sorted(statuses.items())),
        "duration_s": duration,
        "exhausted": any(r["exhausted"] for r in results),
        "client_cpu_s": sum(r["cpu"] for r in results),
        "concurrency": concurrency,
        "processes": processes,
        "new_connection": new_connection,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--cert"), ap.add_argument("--key"), ap.add_argument("--cacert")
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("-d", "--seconds", type=float, default=10)
    ap.add_argument("-X", "--method", default="POST")
    ap.add_argument("--body-size", type=int, default=400)
    ap.add_argument("-H", "--header", action="append", default=[], help="Name: value")
    ap.add_argument("--keepalive", action="store_true", help="reuse connections")
    ap.add_argument("--processes", type=int)
    args = ap.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    result = run_load(args.url, b"x" * args.body_size if args.method.upper() != "GET" else b"", headers,
                      args.cert, args.key, args.cacert, args.concurrency, args.seconds,
                      not args.keepalive, method=args.method, processes=args.processes)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0 if result["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
