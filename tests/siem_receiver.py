"""A SIEM's webhook receiver for tests, written from docs/audit-export.md and not from device-ca's
code: HTTPS with a test CA's server certificate, checks each body's HMAC-SHA256 signature, keeps
the events by seq (dropping repeats) and checks every event's hash and its link to the one before.
It can be down (not listening), failing (503) or accepting, and switched between them on one port."""
from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GENESIS = "0" * 64


def event_hash(event: dict) -> str:
    """The chain's hash of a JSON event, as docs/audit-export.md describes it."""
    details = json.dumps(event["details"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    body = json.dumps([event["seq"], event["at"], event["action"], event["actor"], event["serial"],
                       event["device_id"], details, event["prev_hash"]], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def chain_problems(events: list[dict]) -> list[str]:
    """Events from seq 1: each hash recomputed, each prev_hash the previous event's hash, no gap."""
    problems, prev = [], GENESIS
    for expected, event in enumerate(events, start=1):
        if event["seq"] != expected:
            problems.append(f"expected seq {expected}, got {event['seq']}")
        if event["prev_hash"] != prev:
            problems.append(f"seq {event['seq']}: broken link")
        if event_hash(event) != event["hash"]:
            problems.append(f"seq {event['seq']}: hash does not match")
        prev = event["hash"]
    return problems


class Receiver:
    def __init__(self, port: int, cert: Path, key: Path, secret: bytes):
        self.port, self.secret = port, secret
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.mode = "ok"
        self.requests = 0              # every POST that arrived, whatever the answer
        self.bad_signatures = 0
        self.batches: list[list[int]] = []      # seqs of each accepted body, in arrival order
        self.events: dict[int, dict] = {}       # by seq: repeats dropped
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/siem/events"

    def start(self, mode: str = "ok") -> None:
        self.mode = mode
        if self._server is not None:
            return
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                expected = "sha256=" + hmac.new(receiver.secret, body, hashlib.sha256).hexdigest()
                with receiver.lock:
                    receiver.requests += 1
                    if not hmac.compare_digest(self.headers.get("X-Device-CA-Signature", ""), expected):
                        receiver.bad_signatures += 1
                        status = 401
                    elif receiver.mode != "ok":
                        status = 503
                    else:
                        events = json.loads(body)["events"]
                        receiver.batches.append([e["seq"] for e in events])
                        for event in events:
                            receiver.events.setdefault(event["seq"], event)
                        status = 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.socket = self.context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def stop(self) -> None:
        """Down: no longer listening (connections refused)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def in_order(self) -> list[dict]:
        with self.lock:
            return [self.events[seq] for seq in sorted(self.events)]

    def arrival_order(self) -> list[int]:
        """Each seq at its first arrival: what a receiver that drops repeats by seq ends up with."""
        seen, order = set(), []
        with self.lock:
            for batch in self.batches:
                for seq in batch:
                    if seq not in seen:
                        seen.add(seq)
                        order.append(seq)
        return order
