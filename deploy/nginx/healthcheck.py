#!/usr/bin/env python3
"""Active health checks for nginx in front of device-ca nodes (device-ca.conf beside this file).

Open-source nginx only notices a node failing when a client's connection to it fails (passive
checks); nginx Plus's `health_check` is not available. This loop asks every node's `/healthz` on
both of its listeners every ``--interval`` seconds: the HTTPS listener (EST, balanced as TLS
passed through) and the plain-HTTP listener (OCSP, CRL). /healthz answers 200 only while the
node reaches its database and its token. A listener is marked `down` after ``--fall`` failed
checks in a row and up again after ``--rise`` good ones; so a node is out of nginx's lists at most
``fall * interval + timeout`` seconds (plus the reload) after it dies.

Each change rewrites ``RUN_DIR/upstream-est.conf`` and ``RUN_DIR/upstream-status.conf`` (the
files device-ca.conf includes; written atomically) and reloads nginx: SIGHUP to the master named
in ``RUN_DIR/nginx.pid``, what `nginx -s reload` does. If every node fails a check, none is
marked down: nginx's passive checks then decide, rather than every request being refused.

    healthcheck.py --run-dir /run/device-ca-nginx --node 10.0.0.11:8443:8080 --node 10.0.0.12:8443:8080 --once
    nginx -c /etc/nginx/device-ca.conf
    healthcheck.py --run-dir /run/device-ca-nginx --node 10.0.0.11:8443:8080 --node 10.0.0.12:8443:8080

``--once`` checks once, writes the files (nginx refuses to start without them) and exits.
Standard library only; runs beside nginx as any user that may write RUN_DIR and signal nginx.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("device-ca-healthcheck")

LISTS = {"est": "upstream-est.conf", "status": "upstream-status.conf"}


@dataclass
class Target:
    """One listener of one node and what the checks have said about it."""

    address: str                 # host:port, as nginx's `server` line names it
    url: str                     # its /healthz
    up: bool = True
    streak: int = 0              # checks in a row that disagree with `up`

    def observe(self, healthy: bool, fall: int, rise: int) -> None:
        if healthy == self.up:
            self.streak = 0
            return
        self.streak += 1
        if self.streak >= (rise if healthy else fall):
            self.up, self.streak = healthy, 0
            log.warning("%s is %s", self.address, "up again" if healthy else "down")


@dataclass
class Node:
    name: str
    est: Target
    status: Target
    targets: dict[str, Target] = field(init=False)

    def __post_init__(self) -> None:
        self.targets = {"est": self.est, "status": self.status}


def parse_node(spec: str) -> Node:
    """HOST:HTTPS_PORT:HTTP_PORT (an IPv6 host in brackets)."""
    host, https_port, http_port = spec.rsplit(":", 2)
    if not host or not https_port.isdigit() or not http_port.isdigit():
        raise argparse.ArgumentTypeError(f"--node {spec!r}: expected HOST:HTTPS_PORT:HTTP_PORT")
    return Node(spec, Target(f"{host}:{https_port}", f"https://{host}:{https_port}/healthz"),
                Target(f"{host}:{http_port}", f"http://{host}:{http_port}/healthz"))


def healthy(url: str, timeout: float, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context if url.startswith("https:") else None) as r:
            return r.status == 200
    except (OSError, urllib.error.HTTPError, ssl.SSLError):
        return False


def tls_context(cafile: str | None) -> ssl.SSLContext:
    """The node's certificate is checked against ``cafile`` (the CA chain) when given, never its
    name: it names the balancer, which is not what is asked here. Without ``cafile``: not checked
    (the answer only says whether the node is serving)."""
    context = ssl.create_default_context(cafile=cafile) if cafile else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if not cafile:
        context.verify_mode = ssl.CERT_NONE
    return context


def upstream_lines(nodes: list[Node], kind: str, params: str) -> str:
    targets = [n.targets[kind] for n in nodes]
    panic = not any(t.up for t in targets)      # every node failing: mark none down, nginx decides
    lines = ["# written by healthcheck.py; do not edit" + (" (every node failing: none marked down)" if panic else "")]
    for t in targets:
        lines.append(f"server {t.address} {params}{'' if t.up or panic else ' down'};")
    return "\n".join(lines) + "\n"


def write_lists(run_dir: Path, nodes: list[Node], params: str) -> bool:
    """Rewrite the lists whose contents changed (write, then rename); True if any did."""
    changed = False
    for kind, name in LISTS.items():
        path, text = run_dir / name, upstream_lines(nodes, kind, params)
        if path.exists() and path.read_text() == text:
            continue
        temporary = path.with_name(f".{name}.tmp")
        temporary.write_text(text)
        os.replace(temporary, path)
        changed = True
    return changed


def reload_nginx(run_dir: Path) -> None:
    """SIGHUP to the master in nginx.pid (`nginx -s reload`); nothing if nginx is not running yet."""
    try:
        pid = int((run_dir / "nginx.pid").read_text().strip())
        os.kill(pid, signal.SIGHUP)
        log.info("nginx %d reloaded", pid)
    except (FileNotFoundError, ValueError, ProcessLookupError) as exc:
        log.warning("nginx not reloaded: %s", exc)


def check_round(nodes: list[Node], timeout: float, context: ssl.SSLContext, fall: int, rise: int) -> None:
    """Every listener at once, so that a round takes ``timeout`` at most however many nodes hang."""
    targets = [t for n in nodes for t in n.targets.values()]
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        answers = list(pool.map(lambda t: healthy(t.url, timeout, context), targets))
    for target, answer in zip(targets, answers):
        target.observe(answer, fall, rise)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="Where the lists are written and nginx.pid is.")
    parser.add_argument("--node", type=parse_node, action="append", required=True,
                        help="HOST:HTTPS_PORT:HTTP_PORT of a device-ca node (repeat for each).")
    parser.add_argument("--interval", type=float, default=2.0, help="Seconds between rounds (default 2).")
    parser.add_argument("--timeout", type=float, default=1.0, help="Seconds a /healthz may take (default 1).")
    parser.add_argument("--fall", type=int, default=2, help="Failed checks in a row that mark a node down (default 2).")
    parser.add_argument("--rise", type=int, default=2, help="Good checks in a row that bring it back (default 2).")
    parser.add_argument("--server-params", default="max_fails=2 fail_timeout=10s",
                        help="nginx's passive checks on each `server` line (default: max_fails=2 fail_timeout=10s).")
    parser.add_argument("--cafile", help="CA chain that the nodes' HTTPS certificates are checked against.")
    parser.add_argument("--once", action="store_true", help="Check once, write the lists, exit.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    context = tls_context(args.cafile)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    check_round(args.node, args.timeout, context, fall=1, rise=1)     # the first round decides outright
    changed = write_lists(args.run_dir, args.node, args.server_params)
    if args.once:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        if changed:
            reload_nginx(args.run_dir)
        time.sleep(args.interval)
        check_round(args.node, args.timeout, context, args.fall, args.rise)
        changed = write_lists(args.run_dir, args.node, args.server_params)


if __name__ == "__main__":
    sys.exit(main())
