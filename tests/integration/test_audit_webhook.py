"""Audit events to a SIEM from a running `device-ca serve` (issue 18, item 5): a local HTTPS receiver
(tests/siem_receiver.py) is down, then fails, while events are written by the CLI and by EST; the
server is restarted in between; once the receiver recovers every event arrives, in order, with a
valid signature, and the chain it received is the one `audit export` and `audit verify` show. The
secret appears in no log, no database row, no audit event and no process's command line."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from integration.cli_harness import new_ca_env
from integration.est_pki import simpleenroll
from integration.server_harness import _descendants
from integration.tls_tools import free_port, make_pki
from siem_receiver import Receiver, chain_problems

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "hmac-key-only-the-siem-and-the-ca-know-4f9a"


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _status(env) -> dict:
    return json.loads(env.run("audit", "webhook", "--json").stdout)


def _token(env, device: str) -> dict:
    return json.loads(env.run("token", "create", "--policy", "badge-reader", "--device-id", device, "--json").stdout)


def _database_text(url: str) -> str:
    """Every row of every table as text (SQLite or PostgreSQL alike)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            tables = sa.inspect(c).get_table_names()
            return "\n".join(repr(row) for t in tables for row in c.exec_driver_sql(f'SELECT * FROM "{t}"'))
    finally:
        engine.dispose()


def test_every_event_reaches_a_receiver_that_fails_then_recovers(tmp_path, database_url, serve):
    pki = make_pki(tmp_path / "siem-pki")
    receiver = Receiver(free_port(), pki.server_cert, pki.server_key, SECRET.encode())
    env = new_ca_env(tmp_path, database_url)
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    env.extra.update({"DEVICE_CA_AUDIT_WEBHOOK_URL": receiver.url, "DEVICE_CA_AUDIT_WEBHOOK_CA_FILE": str(pki.ca_cert),
                      "DEVICE_CA_AUDIT_WEBHOOK_SECRET_FILE": str(secret_file)})
    try:
        env.run("init", "--organization", "BuildingCo")
        server = serve(env, "--rate-limit", "0", "--workers", "2")
        # Receiver down: events pile up, delivery notes its failures.
        first = _token(env, "br-100")
        status, _, _ = simpleenroll(server, tmp_path, "br-100", first["secret"])
        assert status == 200
        _token(env, "br-101")
        failing = _wait(lambda: (s := _status(env))["failures"] >= 1 and s, 30, "a failed delivery")
        assert failing["delivered_seq"] == 0 and "Connection" in failing["last_error"]
        # Receiver up but answering 503: still nothing confirmed.
        receiver.start("fail")
        _wait(lambda: receiver.requests >= 1, 30, "a try against the failing receiver")
        assert _status(env)["delivered_seq"] == 0 and receiver.events == {}
        # The server stops while events wait; more events are written while it is down.
        log_before_restart = server.log.read_text(errors="replace")
        server.stop()
        withdrawn = _token(env, "br-102")
        env.run("token", "revoke", withdrawn["id"])
        assert receiver.events == {}                                # nothing was confirmed before the restart
        receiver.mode = "ok"                                        # it recovers while the server is down
        server = serve(env, "--rate-limit", "0", "--workers", "2")
        cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
                    for pid in [server.process.pid, *_descendants(server.process.pid)]
                    if Path(f"/proc/{pid}").exists()]
        assert len(cmdlines) >= 3                                   # serve, its HTTPS workers, the HTTP listener
        # The restarted server delivers everything, from its cursor in the database.
        head = int(json.loads(env.run("audit", "verify", "--json").stdout)["head"].split(":")[0])
        _wait(lambda: len(receiver.events) >= head, 120, f"events 1..{head} at the receiver")
        done = _wait(lambda: (s := _status(env))["waiting"] == 0 and s, 30, "the cursor at the head")
    finally:
        receiver.stop()

    received = receiver.in_order()
    exported = [json.loads(line) for line in env.run("audit", "export").stdout.decode().splitlines()]
    verified = json.loads(env.run("audit", "verify", "--json").stdout)
    assert verified["ok"] and len(exported) == head
    assert received == exported and chain_problems(received) == []
    assert receiver.arrival_order() == list(range(1, head + 1))     # in order, each event first seen after its predecessor
    assert receiver.bad_signatures == 0 and done["failures"] == 0 and done["delivered_seq"] == head
    assert f"{head}:{received[-1]['hash']}" == verified["head"]
    actions = [e["action"] for e in received]
    assert {"ca.created", "token.created", "certificate.issued", "token.withdrawn"} <= set(actions)
    # Only the exported events, all of them, and a `--since` continues where a receiver stopped.
    since = [json.loads(line) for line in env.run("audit", "export", "--since", str(head - 2)).stdout.splitlines()]
    assert [e["seq"] for e in since] == [head - 1, head]
    cef = env.run("audit", "export", "--format", "cef").stdout.decode().splitlines()
    assert len(cef) == head and all(line.startswith("CEF:0|device-ca|") for line in cef)
    # The secret: in no log, row, event or command line.
    logs = log_before_restart + server.log.read_text(errors="replace")
    for place, text in (("server log", logs), ("database", _database_text(database_url)),
                        ("audit export", json.dumps(exported) + "\n".join(cef)),
                        ("command lines and environments", b"".join(cmdlines).decode(errors="replace"))):
        assert SECRET not in text, place
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert SECRET not in ps


def test_serve_refuses_a_webhook_without_its_secret(tmp_path, database_url):
    env = new_ca_env(tmp_path, database_url)
    env.run("init")
    env.extra["DEVICE_CA_AUDIT_WEBHOOK_URL"] = "https://127.0.0.1:9/events"
    proc = env.run("serve", "--port", str(free_port()), "--http-port", str(free_port()), check=False)
    assert proc.returncode == 3 and b"DEVICE_CA_AUDIT_WEBHOOK_SECRET" in proc.stderr
    assert os.environ.get("DEVICE_CA_AUDIT_WEBHOOK_SECRET") is None
