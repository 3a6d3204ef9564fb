#!/usr/bin/env python3
"""The TLS ceiling for EST enrollment: HTTPS requests per second that nginx completes when every
request opens a new TLS 1.3 connection with a verified client certificate (mutual TLS).

An enrollment is one POST of a ~400-byte base64 CSR on a fresh connection, so no EST server on
this machine can exceed this rate; nginx (C, OpenSSL 3.0) is the reference. A throw-away EC
P-256 PKI (CA, server certificate for 127.0.0.1, client certificate) is made in a temp dir;
nginx (tests/integration/tls_tools.Nginx, 2 workers, `ssl_verify_client on`) answers `POST /`
with a small fixed body, and benchmarks/loadgen.run_load drives it: 16 clients, 10 s, each
request a new TCP + TLS connection with the client certificate.

Load generator: wrk cannot present a client certificate (nginx answers its requests 400 "No
required SSL certificate was sent"; --compare shows it), nor can h2load or ab, so loadgen.py
(Python ssl, processes x threads) is the generator. Client and server share the 2 cores, so the
script accounts for CPU: nginx's CPU per request (from /proc of its workers), the client's, and
what other processes took. `nginx alone` = cores / nginx CPU per request is the rate nginx could
reach if it had the machine to itself.

    python3 benchmarks/tls_ceiling.py [--seconds 10] [--concurrency 16] [--compare] [--json]

--compare adds reference runs: the same load with `ssl_session_tickets off`, and with keep-alive;
openssl s_time -new with the client certificate (C client, GET, 16 parallel processes); a new
connection per request without a client certificate (loadgen and wrk) and over plain HTTP (wrk);
wrk against the mTLS server.

Measured here (2 cores, Firecracker VM, OpenSSL 3.0.19, nginx 1.22.1, TLS 1.3, P-256; other
sessions' tests sharing the machine in some runs): nginx with mTLS and a new connection per
request completed 280-434 requests/s against this generator (434 in the run with the machine
otherwise idle; p50 36 ms, p99 62 ms), spending 2.2-2.5 ms of CPU per request, i.e. about
800-900/s if it had both cores to itself. The client spent 1.9-2.2 ms per request; openssl
s_time's C client 1.8-2.0 ms, a Go crypto/tls client 1.6 ms: the generator is not the weak part,
the mutual-TLS handshake under OpenSSL 3.0 is, on both sides. Keep-alive: 11,700/s (nginx
0.05 ms per request). No client certificate: nginx 0.6-0.9 ms per request (wrk 1,480/s);
plain HTTP with a new connection: 0.07 ms (wrk 12,900/s). TLS 1.3 session tickets cost the
server about 0.7 ms per mTLS connection: `ssl_session_tickets off` gave 534/s at 1.7 ms per
request; a bare Python ssl server likewise went from 2.8-3.2 to 1.9-2.1 ms per request with
`SSLContext.num_tickets = 0`. Devices that never resume gain nothing from tickets.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from integration.tls_tools import Nginx, free_port, make_pki  # noqa: E402
from loadgen import run_load  # noqa: E402

BODY = b"x" * 400
TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])      # utime + stime
    return total / TICK


def machine_busy() -> float:
    """CPU-seconds all cores spent busy since boot (from /proc/stat)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK


class Measure:
    """CPU used by nginx's workers and by the whole machine between start() and stop()."""

    def __init__(self, nginx: Nginx):
        self.nginx = nginx

    def __enter__(self):
        self.workers = self.nginx.worker_pids()
        self.nginx0, self.busy0, self.t0 = process_cpu(self.workers), machine_busy(), time.monotonic()
        self.load0 = os.getloadavg()[0]
        return self

    def __exit__(self, *exc):
        self.nginx_cpu = process_cpu(self.workers) - self.nginx0
        self.busy = machine_busy() - self.busy0
        self.wall = time.monotonic() - self.t0
        self.load1 = os.getloadavg()[0]


def nginx_conf(pki, port: int, verify: str = "on", tls: bool = True, extra: str = "") -> str:
    ssl = (f"""
        ssl_certificate {pki.server_cert};
        ssl_certificate_key {pki.server_key};
        ssl_client_certificate {pki.ca_cert};
        ssl_verify_client {verify};
        {extra}""" if tls else "")
    return f"""
    server {{
        listen 127.0.0.1:{port}{' ssl' if tls else ''};{ssl}
        keepalive_requests 100000;
        location = / {{
            default_type text/plain;
            return 200 "enrolled\\n";
        }}
    }}"""


def summarize(name: str, rps: float, m: Measure, requests: int, client_cpu: float | None, extra: dict) -> dict:
    cores = os.cpu_count() or 1
    nginx_ms = m.nginx_cpu / requests * 1000 if requests else float("nan")
    row = {"run": name, "rps": round(rps, 1), **extra,
           "nginx_cpu_ms_per_req": round(nginx_ms, 3),
           "nginx_alone_rps": round(cores * 1000 / nginx_ms) if requests and nginx_ms > 0 else None,
           "nginx_cpu_s": round(m.nginx_cpu, 2), "machine_busy_s": round(m.busy, 2),
           "machine_capacity_s": round(cores * m.wall, 2), "loadavg": [round(m.load0, 2), round(m.load1, 2)]}
    if client_cpu is not None:
        row["client_cpu_ms_per_req"] = round(client_cpu / requests * 1000, 3) if requests else None
        row["client_cpu_s"] = round(client_cpu, 2)
        row["other_cpu_s"] = round(max(0.0, m.busy - m.nginx_cpu - client_cpu), 2)
    return row


def loadgen_run(name, nginx, pki, port, args, new_connection=True, cert=True) -> dict:
    with Measure(nginx) as m:
        r = run_load(f"https://127.0.0.1:{port}/", BODY, {"Content-Type": "application/pkcs10"},
                     pki.client_cert if cert else None, pki.client_key if cert else None, pki.ca_cert,
                     concurrency=args.concurrency, seconds=args.seconds, new_connection=new_connection)
    return summarize(name, r["rps"], m, r["requests"], r["client_cpu_s"],
                     {"p50_ms": round(r["p50_ms"], 2), "p99_ms": round(r["p99_ms"], 2),
                      "errors": r["errors"], "statuses": r["statuses"], "error_samples": r["error_samples"]})


def wrk_run(name, nginx, url, args, seconds=None) -> dict:
    script = Path(nginx.dir) / "post-close.lua"
    script.write_text('wrk.method = "POST"\nwrk.body = string.rep("x", 400)\n'
                      'wrk.headers["Content-Type"] = "application/pkcs10"\n'
                      'wrk.headers["Connection"] = "close"\n')
    before = os.times()
    with Measure(nginx) as m:
        proc = subprocess.run(["wrk", "-c", str(args.concurrency), "-t", "2", "-d", f"{max(1, round(seconds or args.seconds))}s",
                               "--latency", "-s", str(script), url], capture_output=True, text=True)
    after = os.times()
    client = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    out = proc.stdout
    if not re.search(r"Requests/sec:", out):
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{out}\n{proc.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.MULTILINE))
    return summarize(name, rps, m, total, client,
                     {"p50": lat.get("50"), "p99": lat.get("99"),
                      "non_2xx": int(non2xx.group(1)) if non2xx else 0,
                      "socket_errors": errs.group(1) if errs else ""})


def s_time_run(name, nginx, pki, port, args, procs=16) -> dict:
    cmd = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-www", "/",
           "-cert", str(pki.client_cert), "-key", str(pki.client_key), "-CAfile", str(pki.ca_cert),
           "-time", str(int(args.seconds))]
    before = os.times()
    with Measure(nginx) as m:
        t0 = time.monotonic()
        running = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                   for _ in range(procs)]
        outs = [p.communicate()[0] for p in running]
        wall = time.monotonic() - t0
    after = os.times()
    client = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    total = sum(int(m_.group(1)) for o in outs if (m_ := re.search(r"(\d+) connections in [\d.]+s", o)))
    return summarize(name, total / wall, m, total, client, {"processes": procs, "note": "GET, no body"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--workers", default="2", help="nginx worker_processes (default 2 = cores)")
    ap.add_argument("--compare", action="store_true", help="add the reference runs")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="tls-ceiling-") as tmp:
        pki = make_pki(tmp)
        port, plain_port, noticket_port = free_port(), free_port(), free_port()
        servers = (nginx_conf(pki, port, "on") + nginx_conf(pki, plain_port, tls=False)
                   + nginx_conf(pki, noticket_port, "on", extra="ssl_session_tickets off;"))
        with Nginx(servers, worker_processes=args.workers, access_log=False, error_log_level="error") as nginx:
            rows.append(loadgen_run("mTLS, new connection per request (loadgen)", nginx, pki, port, args))
            if args.compare:
                rows.append(loadgen_run("mTLS, new connection, ssl_session_tickets off (loadgen)", nginx, pki,
                                        noticket_port, args))
                rows.append(loadgen_run("mTLS, keep-alive (loadgen)", nginx, pki, port, args, new_connection=False))
                rows.append(s_time_run("mTLS handshakes + GET, openssl s_time -new x16", nginx, pki, port, args))
                rows.append(wrk_run("wrk against the mTLS server (it sends no client cert: 400s)", nginx,
                                    f"https://127.0.0.1:{port}/", args, seconds=2))
                rows.append(wrk_run("plain HTTP, new connection (wrk)", nginx,
                                    f"http://127.0.0.1:{plain_port}/", args))
        if args.compare:
            opt_port = free_port()
            with Nginx(nginx_conf(pki, opt_port, "off"), worker_processes=args.workers, access_log=False,
                       error_log_level="error") as nginx:
                rows.append(loadgen_run("TLS, no client cert, new connection (loadgen)", nginx, pki, opt_port,
                                        args, cert=False))
                rows.append(wrk_run("TLS, no client cert, new connection (wrk)", nginx,
                                    f"https://127.0.0.1:{opt_port}/", args))

    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    cores = os.cpu_count()
    print(f"machine: {cores} cores; uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    for row in rows:
        print(f"\n{row['run']}")
        for k, v in row.items():
            if k != "run" and v not in (None, "", [], {}):
                print(f"    {k:24} {v}")
    head = rows[0]
    print(f"\nnginx mTLS new-connection rate: {head['rps']:.0f} requests/s with {args.concurrency} clients "
          f"on the same {cores} cores (p50 {head['p50_ms']} ms, p99 {head['p99_ms']} ms); nginx used "
          f"{head['nginx_cpu_ms_per_req']} ms CPU per request, so about {head['nginx_alone_rps']}/s with "
          f"the machine to itself; the client used {head.get('client_cpu_ms_per_req')} ms per request.")
    return 0 if head["rps"] > 0 and not head["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
