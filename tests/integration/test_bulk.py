"""`device-ca bulk issue` against real SoftHSM and the database under test: a mixed batch, a
kill -9 in the middle followed by a rerun, server-side keys in PKCS#12, and idempotency."""
from __future__ import annotations

import base64
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from helpers import flip_signature_bit, make_csr
from integration.cli_harness import new_ca_env, openssl
from integration.test_cli_softhsm import _lint

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def env(tmp_path, database_url):
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    return env


def _manifest(out) -> dict[str, dict]:
    with open(out / "manifest.csv", newline="") as f:
        return {row["device_id"]: row for row in csv.DictReader(f)}


def _count(env, sql: str) -> int:
    engine = sa.create_engine(env.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as c:
            return c.exec_driver_sql(sql).scalar()
    finally:
        engine.dispose()


def _write_jsonl(path, devices) -> None:
    with path.open("w") as f:
        for device in devices:
            der = make_csr(device, ou="env-sensor", encoding=Encoding.DER)
            f.write(json.dumps({"device_id": device, "csr": base64.b64encode(der).decode()}) + "\n")


def _verify_all(env, pems) -> None:
    """openssl verify (client purpose) of every file, in one run: each must be OK."""
    pems = [str(p) for p in pems]
    proc = openssl("verify", "-purpose", "sslclient", "-CAfile", str(env.ca_dir / "root.pem"), "-untrusted",
                   str(env.ca_dir / "issuing.pem"), *pems)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [f"{p}: OK" for p in pems]


def test_mixed_batch_issues_the_good_reports_the_bad_and_reruns_to_nothing(env, tmp_path):
    csrs = tmp_path / "csrs"
    csrs.mkdir()
    good = [f"env-{i:04x}" for i in range(30)]
    for device in good:
        (csrs / f"{device}.csr").write_bytes(make_csr(device, ou="env-sensor"))
    (csrs / "env-badsig.csr").write_bytes(flip_signature_bit(make_csr("env-badsig", ou="env-sensor",
                                                                      encoding=Encoding.DER)))
    (csrs / "env-garbage.csr").write_bytes(b"not a CSR at all")
    (csrs / "env-bad1.csr").write_bytes(make_csr("env-bad1", ou="door-lock"))
    (csrs / "lock-7.csr").write_bytes(make_csr("lock-7", ou="env-sensor"))
    out = tmp_path / "out"
    first = env.run("bulk", "issue", "--policy", "env-sensor", "--csr-dir", str(csrs), "--out", str(out),
                    "--json", check=False)
    assert first.returncode == 4, first.stderr               # some items failed
    summary = json.loads(first.stdout)
    assert (summary["issued"], summary["failed"], summary["items"]) == (30, 4, 34)
    manifest = _manifest(out)
    assert {d for d, r in manifest.items() if r["status"] == "issued"} == set(good)
    assert "signature" in manifest["env-badsig"]["error"]
    assert "PKCS#10" in manifest["env-garbage"]["error"]
    assert "outside policy" in manifest["env-bad1"]["error"]
    assert "pattern" in manifest["lock-7"]["error"]
    for device in good:
        pem = out / f"{device}.pem"
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
        assert format(cert.serial_number, "036x") == manifest[device]["serial"]
        assert cert.subject.rfc4514_string() == f"CN={device},OU=env-sensor,O=BuildingCo"
    _verify_all(env, [out / f"{d}.pem" for d in good])
    assert _lint("lint_pkix_cert", out / f"{good[7]}.pem") == []
    assert _count(env, "SELECT COUNT(*) FROM certificates WHERE policy = 'env-sensor'") == 30
    assert _count(env, "SELECT COUNT(*) FROM serial_reservations WHERE state <> 'issued'") == 0

    (out / f"{good[3]}.pem").unlink()                          # a lost file is written again, not reissued
    again = env.run("bulk", "issue", "--policy", "env-sensor", "--csr-dir", str(csrs), "--out", str(out),
                    "--json", check=False)
    summary = json.loads(again.stdout)
    assert (summary["issued"], summary["already_issued"], summary["new_batch"]) == (0, 30, False)
    assert (out / f"{good[3]}.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert _count(env, "SELECT COUNT(*) FROM certificates WHERE policy = 'env-sensor'") == 30
    events = _count(env, "SELECT COUNT(*) FROM audit_events WHERE action IN ('batch.opened', 'batch.finished')")
    assert events == 3                                         # opened once, finished after each run
    assert "audit log OK" in env.run("audit", "verify").stdout.decode()


def test_kill_9_mid_batch_then_rerun_gives_each_device_exactly_one_certificate(env, tmp_path):
    batch = tmp_path / "batch.jsonl"
    devices = [f"env-{i:05x}" for i in range(1600)]
    _write_jsonl(batch, devices)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "device_ca.cli.main", "bulk", "issue", "--policy", "env-sensor", "--jsonl",
            str(batch), "--out", str(out), "--workers", "2", "--batch-id", "line-3-shift-2"]
    proc = subprocess.Popen(args, env=env.env, cwd=env.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if _count(env, "SELECT COUNT(*) FROM certificates") >= 200:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch finished before it could be killed; make it larger"
    os.killpg(proc.pid, signal.SIGKILL)                        # the command and its signing workers
    proc.wait(30)
    issued_before = _count(env, "SELECT COUNT(*) FROM certificates")
    assert 0 < issued_before < len(devices)

    rerun = env.run("bulk", "issue", "--policy", "env-sensor", "--jsonl", str(batch), "--out", str(out),
                    "--workers", "2", "--batch-id", "line-3-shift-2", "--json")
    summary = json.loads(rerun.stdout)
    assert summary["issued"] + summary["already_issued"] == len(devices) and summary["failed"] == 0
    assert summary["already_issued"] >= issued_before - 200    # at most the chunks in flight
    per_device = _count(env, "SELECT MAX(n) FROM (SELECT device_id, COUNT(*) AS n FROM certificates "
                             "GROUP BY device_id) AS c")
    assert per_device == 1
    assert _count(env, "SELECT COUNT(*) FROM certificates") == len(devices)
    # every serial the token may have signed is recorded: each reservation is issued (re-signed on
    # the same TBS after the kill) or explicitly abandoned, none left dangling
    assert _count(env, "SELECT COUNT(*) FROM serial_reservations WHERE state = 'reserved'") == 0
    assert _count(env, "SELECT COUNT(*) FROM batch_items WHERE state <> 'issued'") == 0
    manifest = _manifest(out)
    assert len(manifest) == len(devices) and all(r["status"] == "issued" for r in manifest.values())
    _verify_all(env, [out / f"{d}.pem" for d in devices])     # also those written before the kill
    assert _lint("lint_pkix_cert", out / f"{devices[-1]}.pem") == []
    assert "audit log OK" in env.run("audit", "verify").stdout.decode()


@pytest.mark.parametrize("failpoint", ["after-reserve:kill", "after-sign:kill", "before-record:kill"])
def test_killed_at_each_step_of_a_chunk_then_rerun(env, tmp_path, failpoint):
    """The command killed (SIGKILL) at a named step of its second chunk, every time: the first chunk
    is recorded, the second is reserved and nothing of it is good; the rerun signs the same TBS
    under the same serials and every device ends with exactly one certificate."""
    batch = tmp_path / "batch.jsonl"
    devices = [f"env-{i:05x}" for i in range(450)]
    _write_jsonl(batch, devices)
    out = tmp_path / "out"
    args = ("bulk", "issue", "--policy", "env-sensor", "--jsonl", str(batch), "--out", str(out), "--workers", "1",
            "--batch-id", "line-4", "--json")
    killed = env.run(*args, check=False, DEVICE_CA_FAILPOINT=f"{failpoint}:{devices[250]}",
                     DEVICE_CA_TEST_FAILPOINTS="1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _count(env, "SELECT COUNT(*) FROM certificates") == 200
    assert _count(env, "SELECT COUNT(*) FROM serial_reservations WHERE state = 'reserved'") == 200
    assert _count(env, f"SELECT COUNT(*) FROM certificates WHERE device_id = '{devices[250]}'") == 0

    summary = json.loads(env.run(*args).stdout)
    assert (summary["issued"], summary["already_issued"], summary["failed"]) == (250, 200, 0)
    assert _count(env, "SELECT COUNT(*) FROM certificates") == len(devices)
    assert _count(env, "SELECT COUNT(DISTINCT device_id) FROM certificates") == len(devices)
    assert _count(env, "SELECT COUNT(*) FROM serial_reservations WHERE state = 'reserved'") == 0
    assert _count(env, "SELECT COUNT(*) FROM serial_reservations WHERE state = 'abandoned'") == 0  # same TBS again
    _verify_all(env, [out / f"{d}.pem" for d in devices[200:400]])
    assert "audit log OK" in env.run("audit", "verify").stdout.decode()


def test_server_generated_keys_come_in_pkcs12_opened_with_the_batch_secret(env, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("env-a001\nenv-a002\nenv-a003\n")
    out = tmp_path / "out"
    proc = env.run("bulk", "issue", "--policy", "env-sensor", "--generate-keys", str(ids), "--out", str(out))
    secret = proc.stderr.decode().split("keep it, it is not stored): ")[1].split()[0]
    for device in ("env-a001", "env-a002", "env-a003"):
        shown = openssl("pkcs12", "-in", str(out / f"{device}.p12"), "-passin", f"pass:{secret}", "-nodes")
        assert shown.returncode == 0, shown.stderr
        assert "PRIVATE KEY-----" in shown.stdout and f"CN={device}" in shown.stdout.replace(" = ", "=")
        wrong = openssl("pkcs12", "-in", str(out / f"{device}.p12"), "-passin", "pass:wrong", "-nodes")
        assert wrong.returncode != 0
    assert not list(out.glob(".*.key.p8"))                    # the interim encrypted keys are gone
    database = env.database_url.removeprefix("sqlite:///")
    if env.database_url.startswith("sqlite"):
        for path in (database, database + "-wal"):
            if os.path.exists(path):
                assert secret.encode() not in open(path, "rb").read()
    refused = env.run("bulk", "issue", "--policy", "env-sensor", "--generate-keys", str(ids), "--out", str(out),
                      check=False)
    assert refused.returncode == 7 and b"secret" in refused.stderr
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    again = env.run("bulk", "issue", "--policy", "env-sensor", "--generate-keys", str(ids), "--out", str(out),
                    "--secret-file", str(secret_file), "--json")
    assert json.loads(again.stdout)["already_issued"] == 3


def test_a_batch_id_is_bound_to_its_input(env, tmp_path):
    csrs = tmp_path / "csrs"
    csrs.mkdir()
    (csrs / "env-b001.csr").write_bytes(make_csr("env-b001", ou="env-sensor"))
    env.run("bulk", "issue", "--policy", "env-sensor", "--csr-dir", str(csrs), "--out", str(tmp_path / "o1"),
            "--batch-id", "fixed")
    (csrs / "env-b002.csr").write_bytes(make_csr("env-b002", ou="env-sensor"))
    other = env.run("bulk", "issue", "--policy", "env-sensor", "--csr-dir", str(csrs), "--out", str(tmp_path / "o2"),
                    "--batch-id", "fixed", check=False)
    assert other.returncode == 6 and b"another policy or other input" in other.stderr
    assert _count(env, "SELECT COUNT(*) FROM certificates WHERE policy = 'env-sensor'") == 1


def test_two_runs_of_one_batch_at_once_never_issue_twice(env, tmp_path):
    batch = tmp_path / "batch.jsonl"
    devices = [f"env-{i:05x}" for i in range(600)]
    _write_jsonl(batch, devices)
    args = [sys.executable, "-m", "device_ca.cli.main", "bulk", "issue", "--policy", "env-sensor", "--jsonl",
            str(batch), "--workers", "1", "--batch-id", "twice"]
    runs = [subprocess.Popen(args + ["--out", str(tmp_path / f"out{i}")], env=env.env, cwd=env.home,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    for run in runs:
        run.wait(300)
    assert _count(env, "SELECT MAX(n) FROM (SELECT device_id, COUNT(*) AS n FROM certificates "
                       "GROUP BY device_id) AS c") == 1
    env.run("bulk", "issue", "--policy", "env-sensor", "--jsonl", str(batch), "--out", str(tmp_path / "out2"),
            "--batch-id", "twice")                            # whatever the race left, a rerun completes it
    assert _count(env, "SELECT COUNT(*) FROM certificates") == len(devices)
    assert _count(env, "SELECT COUNT(*) FROM serial_reservations WHERE state = 'reserved'") == 0


def test_a_batch_opened_before_items_kept_their_csr_is_completed_from_the_input(env, tmp_path):
    """Batches opened by an earlier device-ca have no CSR on their items: a rerun takes them from the
    same input, and an item whose CSR cannot be found fails instead of getting a generated key."""
    batch = tmp_path / "batch.jsonl"
    devices = [f"env-{i:04x}" for i in range(6)]
    _write_jsonl(batch, devices)
    out = tmp_path / "out"
    args = ["bulk", "issue", "--policy", "env-sensor", "--jsonl", str(batch), "--out", str(out), "--workers", "1",
            "--json"]
    env.run(*args, "--batch-id", "old")
    assert _count(env, "SELECT COUNT(*) FROM certificates") == 6
    for record in json.loads(env.run("list", "--json").stdout):     # the devices may be enrolled again
        env.run("revoke", record["serial"], "--reason", "cessationOfOperation")
    # the same input as a new batch, its items made to look like an old device-ca's
    engine = sa.create_engine(env.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as c:
            c.exec_driver_sql("INSERT INTO batches (id, policy, input_sha256, items, keygen, state, created_at, "
                              "created_by) SELECT 'older', policy, input_sha256, items, keygen, 'open', created_at, "
                              "created_by FROM batches WHERE id = 'old'")
            c.exec_driver_sql("INSERT INTO batch_items (batch_id, device_id, position, csr_sha256, state) "
                              "SELECT 'older', device_id, position, csr_sha256, 'pending' FROM batch_items "
                              "WHERE batch_id = 'old'")
            c.exec_driver_sql("INSERT INTO batch_items (batch_id, device_id, position, state) "
                              "VALUES ('older', 'env-ffff', 99, 'pending')")        # not in the input
    finally:
        engine.dispose()
    rerun = env.run(*args, "--batch-id", "older", check=False)
    assert rerun.returncode == 4, rerun.stderr
    assert (json.loads(rerun.stdout)["issued"], json.loads(rerun.stdout)["failed"]) == (6, 1)
    assert "no CSR" in _manifest(out)["env-ffff"]["error"] and not (out / "env-ffff.p12").exists()
    assert _count(env, "SELECT COUNT(*) FROM certificates") == 12


def test_input_from_a_pipe_with_duplicates(env, tmp_path):
    batch = tmp_path / "batch.jsonl"
    _write_jsonl(batch, ["env-0a01", "env-0a02", "env-0a01"])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "device_ca.cli.main", "bulk", "issue", "--policy", "env-sensor",
                           "--jsonl", "-", "--out", str(out), "--json"], env=env.env, cwd=env.home,
                          stdin=batch.open("rb"), capture_output=True, timeout=120)
    assert proc.returncode == 4, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["issued"], summary["failed"], summary["items"]) == (2, 1, 3)
    rows = list(csv.DictReader((out / "manifest.csv").open(newline="")))
    assert [(r["device_id"], r["status"]) for r in rows] == [("env-0a01", "issued"), ("env-0a02", "issued"),
                                                             ("env-0a01", "failed")]
