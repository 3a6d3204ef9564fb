"""Three `device-ca serve` nodes started at the same instant on a fresh PostgreSQL primary with a
synchronous standby, one SoftHSM token, deploy/nginx in front (issue 17, "done when").

Bounded load runs through nginx: EST enrollments with one-time tokens (some tokens raced from two
clients at once), OCSP, revocations from the command line and a bulk batch. During it one node is
killed (SIGKILL of all its processes) and then the primary (the standby is promoted). Afterwards:
every 200 has its certificate in the database, no token gave two certificates, CRL numbers rise
and every live node serves and holds the newest CRL, the leases never had two holders at once,
`reconcile` lists no certificate anyone received and `audit verify` is clean."""
from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509 import ocsp

from device_ca.ca.serial import to_hex
from helpers import make_csr
from integration.cli_harness import make_tokens
from integration.nodes_harness import nginx_front, node_envs, start_nodes
from integration.tls_tools import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILL_NODE_AT, KILL_PRIMARY_AT, PROMOTE_AFTER, LOAD_SECONDS = 4.0, 9.0, 3.0, 24.0
PACE = 0.1             # seconds each of the 3 EST clients waits between its enrollments


@dataclass
class Results:
    issued: dict[str, str] = field(default_factory=dict)           # device -> serial of its 200
    statuses: Counter = field(default_factory=Counter)             # EST status (0: no answer)
    retry_after: Counter = field(default_factory=Counter)          # 503s with and without Retry-After
    ok_after_promotion: int = 0
    raced: dict[str, list[int]] = field(default_factory=dict)      # device -> statuses of its raced requests
    ocsp: Counter = field(default_factory=Counter)
    revoked: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _enroll(port: int, context: ssl.SSLContext, device: str, secret: str, csr: bytes):
    """(status, serial or None, headers) of one simpleenroll through the balancer, a new connection."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=20)
    try:
        auth = base64.b64encode(f"{device}:{secret}".encode()).decode()
        connection.request("POST", "/.well-known/est/env-sensor/simpleenroll", base64.b64encode(csr),
                           {"Content-Type": "application/pkcs10", "Authorization": f"Basic {auth}"})
        response = connection.getresponse()
        body = response.read()
        serial = None
        if response.status == 200:
            (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
            serial = to_hex(cert.serial_number)
        return response.status, serial, dict(response.getheaders())
    except (OSError, http.client.HTTPException):
        return 0, None, {}
    finally:
        connection.close()


def _ocsp_status(url: str, request: bytes) -> str:
    try:
        with urllib.request.urlopen(urllib.request.Request(
                url, data=request, headers={"Content-Type": "application/ocsp-request"}), timeout=10) as r:
            answer = ocsp.load_der_ocsp_response(r.read())
    except OSError:
        return "no answer"
    if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return answer.response_status.name
    return answer.certificate_status.name


def test_three_nodes_through_a_node_death_and_a_database_failover(tmp_path, pg_cluster, serve):
    cluster = pg_cluster
    est_port, status_port = free_port(), free_port()
    envs = node_envs(tmp_path, cluster.url, 3, DEVICE_CA_PUBLIC_URL=f"http://127.0.0.1:{status_port}")
    env = envs[0]
    # the balancer names the client (PROXY header): the test's clients are all 127.0.0.1, one bucket
    nodes = start_nodes(serve, envs, "--load-balancer", "127.0.0.1", "--rate-limit", "500",
                        "--workers", "1", "--threads", "4", "--http-workers", "1")

    with cluster.connect() as db:                       # started together: one responder, one CRL each
        assert db.execute("SELECT count(*) FROM ocsp_responders").fetchone()[0] == 1
        assert dict(db.execute("SELECT ca, count(*) FROM crls GROUP BY ca").fetchall()) == {"issuing": 1, "root": 1}

    devices = [f"env-{i:04x}" for i in range(1, 700)]
    secrets = make_tokens(env, "env-sensor", devices)
    csrs = {d: make_csr(d, ou="env-sensor", encoding=Encoding.DER) for d in devices}
    raced = devices[:8]
    context = ssl.create_default_context(cafile=str(env.ca_dir / "chain.pem"))
    context.check_hostname = False
    issuing = x509.load_pem_x509_certificate((env.ca_dir / "issuing.pem").read_bytes())
    results = Results()
    queue = iter(devices[len(raced):])
    queue_lock = threading.Lock()
    stop = threading.Event()
    promoted = threading.Event()

    with nginx_front(tmp_path, env, nodes, est_port, status_port) as front:
        def record(device, status, serial, headers):
            with results.lock:
                results.statuses[status] += 1
                if status == 503:
                    results.retry_after["Retry-After" in headers] += 1
                if serial is not None:
                    assert device not in results.issued, f"{device} answered 200 twice"
                    results.issued[device] = serial
                    if promoted.is_set():
                        results.ok_after_promotion += 1

        def enroller():
            while not stop.is_set():
                with queue_lock:
                    device = next(queue, None)
                if device is None:
                    return
                record(device, *_enroll(est_port, context, device, secrets[device], csrs[device]))
                time.sleep(PACE)                     # bounded: the load spans the node death and the failover

        def racer(device):
            status, serial, headers = _enroll(est_port, context, device, secrets[device], csrs[device])
            record(device, status, serial, headers)
            with results.lock:
                results.raced.setdefault(device, []).append(status)

        def ocsp_checker():
            while not stop.is_set():
                with results.lock:
                    serials = list(results.issued.values())
                serial = serials[-1] if serials else None
                if serial is None:
                    time.sleep(0.1)
                    continue
                results.ocsp[_ocsp_status(f"{front.status}/ocsp", _request(issuing, serial))] += 1
                time.sleep(0.05)

        def revoker():
            while not stop.wait(1.5):
                with results.lock:
                    candidates = [s for s in results.issued.values() if s not in results.revoked]
                if not candidates:
                    continue
                proc = env.run("revoke", candidates[0], "--reason", "keyCompromise", check=False)
                if proc.returncode == 0:
                    results.revoked.append(candidates[0])

        bulk_out = tmp_path / "bulk"
        bulk_input = tmp_path / "bulk.jsonl"
        bulk_input.write_text("".join(json.dumps({"device_id": f"env-b{i:03x}", "csr": base64.b64encode(
            make_csr(f"env-b{i:03x}", ou="env-sensor", encoding=Encoding.DER)).decode()}) + "\n"
            for i in range(1, 61)))
        bulk_runs = []

        def bulk():
            time.sleep(2)
            proc = envs[2].run("bulk", "issue", "--policy", "env-sensor", "--jsonl", str(bulk_input),
                               "--out", str(bulk_out), "--batch-id", "line-7", "--workers", "1", "--json",
                               check=False)
            bulk_runs.append(proc)

        threads = [threading.Thread(target=enroller) for _ in range(3)]
        threads += [threading.Thread(target=racer, args=(d,)) for d in raced for _ in range(2)]
        threads += [threading.Thread(target=f) for f in (ocsp_checker, revoker, bulk)]
        started = time.monotonic()
        for t in threads:
            t.start()
        try:
            time.sleep(KILL_NODE_AT)
            nodes[1].kill()                                          # a node dies
            time.sleep(KILL_PRIMARY_AT - KILL_NODE_AT)
            cluster.kill_primary()                                   # then the database's primary
            time.sleep(PROMOTE_AFTER)
            cluster.promote()
            promoted.set()
            time.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - started)))
        finally:
            stop.set()
            for t in threads:
                t.join(120)

        # A bulk run cut by the failover is resumed by running it again (same batch id).
        if not bulk_runs or bulk_runs[0].returncode != 0:
            rerun = envs[2].run("bulk", "issue", "--policy", "env-sensor", "--jsonl", str(bulk_input),
                                "--out", str(bulk_out), "--batch-id", "line-7", "--workers", "1", "--json")
            bulk_runs.append(rerun)
        summary = json.loads(bulk_runs[-1].stdout)

        live = [nodes[0], nodes[2]]
        time.sleep(7)                                                # a janitor round (5 s) on every node
        with cluster.connect() as db:
            newest_number = db.execute("SELECT max(number) FROM crls WHERE ca = 'issuing'").fetchone()[0]
            crls = db.execute("SELECT number, this_update FROM crls WHERE ca = 'issuing' ORDER BY number").fetchall()
            recorded = {r[0]: r[1] for r in db.execute(
                "SELECT serial, status FROM certificates WHERE device_id LIKE 'env-%'").fetchall()}
            per_device = db.execute("SELECT device_id, count(*) FROM certificates WHERE device_id LIKE 'env-%' "
                                    "GROUP BY device_id HAVING count(*) > 1").fetchall()
            history = db.execute("SELECT name, holder, acquired_at, previous_holder, previous_expires_at "
                                 "FROM lease_history ORDER BY id").fetchall()
        probes = []                                                  # "within seconds": at most 5
        for _ in range(10):
            probes.append({n.http: _served_crl_number(n.http) for n in live})
            if set(probes[-1].values()) == {newest_number}:
                break
            time.sleep(0.5)
        served = probes[-1]
        logs = {n.http: n.log.read_text()[-2000:] for n in live} if set(served.values()) != {newest_number} else {}
        through_balancer = _served_crl_number(front.status)
        for _ in range(24):                                              # a janitor round (5 s) or two
            files = {n.http: _file_crl_number(n.env.home / "crl" / "issuing.crl") for n in live}
            if set(files.values()) == {newest_number}:
                break
            time.sleep(0.5)
        reserved = json.loads(env.run("reconcile", "--json", "--older-than", "0").stdout)
        audit = json.loads(env.run("audit", "verify", "--json").stdout)
        final_ocsp = {s: _ocsp_status(f"{front.status}/ocsp", _request(issuing, s)) for s in results.revoked}

    ok = len(results.issued)
    print(f"EST statuses {dict(results.statuses)}, 503 with Retry-After {dict(results.retry_after)}, "
          f"200s after promotion {results.ok_after_promotion}, OCSP {dict(results.ocsp)}, "
          f"revoked {len(results.revoked)}, bulk {summary}, CRLs {[n for n, _ in crls]}")

    # every 200 has its certificate, recorded
    assert ok > 20
    missing = sorted(d for d, s in results.issued.items() if s not in recorded)
    assert not missing, f"{len(missing)} answered 200 but not in the database after the failover: {missing[:10]}"
    # the service went on after the failover without a restart, and said 503 + Retry-After during it
    assert results.ok_after_promotion > 0
    # 0: in flight to the killed node; 202: a raced token held by the other attempt, or by one the
    # failover cut off (come back later); 401: a raced token the other attempt used
    assert set(results.statuses) <= {0, 200, 202, 401, 503}, results.statuses
    assert results.retry_after[False] == 0
    assert set(results.ocsp) <= {"GOOD", "REVOKED", "TRY_LATER"}, results.ocsp
    # one token, one certificate: raced tokens gave at most one 200 and one certificate
    for device, statuses in results.raced.items():
        assert statuses.count(200) <= 1, (device, statuses)
    assert per_device == []
    # the bulk batch issued every item once
    assert summary["issued"] + summary.get("skipped", 0) >= 60 and summary["failed"] == 0
    # CRL numbers strictly increase with time; every live node (and the balancer) serves the newest
    assert [n for n, _ in crls] == sorted({n for n, _ in crls})
    assert all(a[1] <= b[1] for a, b in zip(crls, crls[1:]))
    assert set(served.values()) == {newest_number} and through_balancer == newest_number, (probes, newest_number, logs)
    assert set(files.values()) == {newest_number}, (files, newest_number)
    # revocations are on OCSP through the balancer
    assert results.revoked and set(final_ocsp.values()) == {"REVOKED"}, final_ocsp
    # a lease changed hands only after the previous holder's had run out
    for name, holder, acquired_at, previous_holder, previous_expires_at in history:
        if previous_holder is not None:
            assert acquired_at >= previous_expires_at, (name, holder, previous_holder)
    janitor_holders = [h for h in history if h[0] == "janitor:issuing"]
    assert janitor_holders, history
    # nothing anyone received is an unfinished reservation; the audit chain verifies
    assert not {r["serial"] for r in reserved} & set(results.issued.values())
    assert audit["ok"], audit


def _name_hash(issuer: x509.Certificate) -> bytes:
    digest = hashes.Hash(hashes.SHA1())
    digest.update(issuer.subject.public_bytes())
    return digest.finalize()


def _key_hash(issuer: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import PublicFormat
    from asn1crypto import keys

    spki = keys.PublicKeyInfo.load(issuer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    digest = hashes.Hash(hashes.SHA1())
    digest.update(spki["public_key"].contents[1:])
    return digest.finalize()


def _request(issuer: x509.Certificate, serial: str) -> bytes:
    return ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        _name_hash(issuer), _key_hash(issuer), int(serial, 16), hashes.SHA1()).build().public_bytes(Encoding.DER)


def _served_crl_number(base: str) -> int:
    with urllib.request.urlopen(f"{base}/crl/issuing.crl", timeout=10) as r:
        crl = x509.load_der_x509_crl(r.read())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _file_crl_number(path) -> int:
    crl = x509.load_der_x509_crl(path.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_one_rate_limit_bucket_per_device_across_nodes_and_no_spoofed_proxy_header(tmp_path, postgres_url, serve):
    """Two nodes behind deploy/nginx, `--rate-limit 1` (burst 2): a device's requests, spread over
    both nodes by the balancer, share one bucket (per node, it would get 2 each). Attack: a client
    that is not the balancer sends its own PROXY header to a node, to pass as another address: its
    handshake fails and nothing reaches the application."""
    est_port, status_port = free_port(), free_port()
    envs = node_envs(tmp_path, postgres_url, 2, DEVICE_CA_PUBLIC_URL=f"http://127.0.0.1:{status_port}")
    nodes = start_nodes(serve, envs, "--load-balancer", "127.0.0.1", "--rate-limit", "1")
    with nginx_front(tmp_path, envs[0], nodes, est_port, status_port) as front:
        context = ssl.create_default_context(cafile=str(envs[0].ca_dir / "chain.pem"))
        context.check_hostname = False
        statuses, retry_after = [], []
        for _ in range(6):                                   # a new connection each: nginx alternates nodes
            # from 127.0.0.3: a device of its own (127.0.0.1, nginx's own address, has spent its bucket
            # on the readiness checks)
            connection = http.client.HTTPSConnection("127.0.0.1", est_port, context=context, timeout=10,
                                                     source_address=("127.0.0.3", 0))
            connection.request("GET", "/.well-known/est/cacerts")
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            retry_after.append(response.getheader("Retry-After"))
            connection.close()
        upstreams = set(re.findall(r" (127\.0\.0\.1:\d+) ", (front.run_dir / "est-access.log").read_text()))
    assert upstreams == {f"127.0.0.1:{n.port}" for n in nodes}, upstreams      # both nodes answered
    assert statuses[:2] == [200, 200] and statuses.count(200) <= 3, statuses    # 3: one refill if a second passed
    assert all(r is not None and int(r) >= 1 for s, r in zip(statuses, retry_after) if s == 429)

    spoofed = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--haproxy-protocol",
                              "--interface", "127.0.0.2", "--cacert", str(envs[0].ca_dir / "chain.pem"),
                              "--max-time", "10", f"{nodes[0].est}/cacerts"], capture_output=True, text=True)
    assert spoofed.stdout == "000" and spoofed.returncode != 0, (spoofed.stdout, spoofed.returncode)
    honest = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--interface", "127.0.0.2",
                             "--cacert", str(envs[0].ca_dir / "chain.pem"), "--max-time", "10",
                             f"{nodes[0].est}/cacerts"], capture_output=True, text=True)
    assert honest.stdout == "200"                            # the same client without the header: served
