"""The operator's walk-through with the real CLI, SoftHSM token, openssl and pkilint.

Every command runs as a separate `device-ca` process, as an operator would run it.
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest
import sqlalchemy as sa

from integration.cli_harness import MODULE, new_ca_env, openssl, openssl_csr

pytestmark = pytest.mark.integration


@pytest.fixture
def ca_env(tmp_path, database_url):
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    return env


def _lint(tool: str, *files) -> list[str]:
    """Findings at WARNING or above from the pkilint CLI, less its known false positive on urn: SAN URIs
    (pkilint 0.13.3 rejects RFC 9039 device URNs; README "Linting")."""
    args = [tool, "lint", "-s", "WARNING", "-f", "JSON"] + (["-t", "CRL", "-p", "PKIX"] if tool == "lint_crl" else [])
    proc = subprocess.run(args + [str(f) for f in files], capture_output=True, text=True, timeout=120)
    findings = [f"{d['severity']} {d['code']} {d['message']} @ {r['node_path']}"
                for r in json.loads(proc.stdout)["results"] for d in r["finding_descriptions"]]
    kept = [f for f in findings if not (f.startswith("ERROR pkix.invalid_uri_syntax") and '"urn:' in f)]
    assert proc.returncode == len(findings), proc.stderr
    return kept


def test_init_creates_non_extractable_keys_and_refuses_to_overwrite(ca_env):
    listing = subprocess.run(["pkcs11-tool", "--module", MODULE, "--token-label", ca_env.token, "--login",
                              "--pin", "env:TEST_PIN", "--list-objects", "--type", "privkey"],
                             capture_output=True, text=True, env={**ca_env.env, "TEST_PIN": ca_env.pin})
    assert listing.returncode == 0, listing.stderr
    blocks = [b for b in listing.stdout.split("Private Key Object") if b.strip()]
    assert {l.split(":", 1)[1].strip() for b in blocks for l in b.splitlines() if "label:" in l} == \
        {"device-ca-root", "device-ca-issuing", "device-ca-audit"}        # the audit key signs checkpoints
    for block in blocks:
        assert "never extractable" in block and "sensitive" in block
    again = ca_env.run("init", check=False)
    assert again.returncode == 6 and b"refusing to overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    show = json.loads(ca_env.run("ca", "show", "--json").stdout)
    assert [c["name"] for c in show] == ["root", "issuing"]
    assert show[1]["key"] == f"pkcs11:token={ca_env.token};object=device-ca-issuing"
    chain = ca_env.run("ca", "chain").stdout
    assert chain.count(b"BEGIN CERTIFICATE") == 2
    for name in ("root.pem", "issuing.pem"):
        assert _lint("lint_pkix_cert", ca_env.ca_dir / name) == []
    assert _lint("lint_pkix_signer_signee_cert_chain", ca_env.ca_dir / "root.pem", ca_env.ca_dir / "issuing.pem") == []
    text = openssl("x509", "-in", str(ca_env.ca_dir / "issuing.pem"), "-noout", "-text").stdout
    assert "CA:TRUE, pathlen:0" in text


def test_issue_verify_lint_list_show_revoke_audit(ca_env, tmp_path):
    csr = openssl_csr(tmp_path, "lock", "/O=BuildingCo/OU=door-lock/CN=lock-101")
    cert = tmp_path / "lock.pem"
    issued = ca_env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--device-id", "lock-101",
                        "--out", str(cert))
    serial = issued.stderr.decode().split("issued serial ")[1].split()[0]
    verify = openssl("verify", "-CAfile", str(ca_env.ca_dir / "root.pem"), "-untrusted",
                     str(ca_env.ca_dir / "issuing.pem"), "-purpose", "sslclient", str(cert))
    assert verify.returncode == 0 and verify.stdout.strip().endswith("OK"), verify.stdout + verify.stderr
    assert _lint("lint_pkix_cert", cert) == []
    assert _lint("lint_pkix_signer_signee_cert_chain", ca_env.ca_dir / "issuing.pem", cert) == []
    text = openssl("x509", "-in", str(cert), "-noout", "-text").stdout
    assert "CA:FALSE" in text and "TLS Web Client Authentication" in text
    assert "OCSP - URI:http://127.0.0.1:8080/ocsp" in text and "URI:http://127.0.0.1:8080/crl/issuing.crl" in text

    listed = json.loads(ca_env.run("list", "--json").stdout)
    assert [(c["serial"], c["device_id"], c["status"]) for c in listed] == [(serial, "lock-101", "good")]
    shown = json.loads(ca_env.run("show", serial, "--json").stdout)
    assert shown["subject"] == "CN=lock-101,OU=door-lock,O=BuildingCo"
    assert ca_env.run("show", serial, "--pem").stdout == cert.read_bytes()

    revoked = ca_env.run("revoke", serial, "--reason", "keyCompromise")
    assert b"revoked" in revoked.stdout
    assert json.loads(ca_env.run("list", "--status", "revoked", "--json").stdout)[0]["revocation_reason"] == \
        "keyCompromise"
    twice = ca_env.run("revoke", serial, "--reason", "keyCompromise", check=False)
    assert twice.returncode == 6 and b"already revoked" in twice.stderr
    unknown = ca_env.run("revoke", "01" + "00" * 17, check=False)
    assert unknown.returncode == 5 and b"no certificate" in unknown.stderr

    audit = json.loads(ca_env.run("audit", "verify", "--json").stdout)
    assert audit["ok"] and audit["events"] == 4     # ca.created, intent, issued, revoked


def test_bad_csr_is_refused_with_one_line_and_nothing_stored(ca_env, tmp_path):
    bad = tmp_path / "bad.csr"
    bad.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    proc = ca_env.run("issue", "--policy", "door-lock", "--csr", str(bad), "--device-id", "lock-1", check=False)
    assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1 and b"Traceback" not in proc.stderr
    outside = openssl_csr(tmp_path, "evil", "/O=EvilCo/OU=door-lock/CN=lock-1")
    proc = ca_env.run("issue", "--policy", "door-lock", "--csr", str(outside), check=False)
    assert proc.returncode == 4 and b"outside policy door-lock" in proc.stderr
    proc = ca_env.run("issue", "--policy", "toaster", "--csr", str(outside), check=False)
    assert proc.returncode == 5 and b"unknown policy" in proc.stderr
    assert json.loads(ca_env.run("list", "--json").stdout) == []
    assert json.loads(ca_env.run("audit", "verify", "--json").stdout)["events"] == 1


def test_audit_verify_detects_an_edited_row(ca_env, tmp_path):
    csr = openssl_csr(tmp_path, "lock", "/O=BuildingCo/OU=door-lock/CN=lock-7")
    ca_env.run("issue", "--policy", "door-lock", "--csr", str(csr))
    engine = sa.create_engine(ca_env.database_url)
    with engine.begin() as c:
        c.exec_driver_sql("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 2")
    engine.dispose()
    proc = ca_env.run("audit", "verify", check=False)
    assert proc.returncode == 12 and b"event 2: content does not match its hash" in proc.stderr


def test_audit_rollback_and_sub_second_edits_are_caught(ca_env, tmp_path):
    """Attack (issue 14, item 10, first two points): the newest events deleted and the head moved
    back consistently passes a plain verify, but not one against the head kept earlier
    (--expect-head SEQ:HASH, exit 12); a time changed below the second is an edit too."""
    for device in ("lock-7", "lock-8"):
        ca_env.run("issue", "--policy", "door-lock", "--csr",
                   str(openssl_csr(tmp_path, device, f"/O=BuildingCo/OU=door-lock/CN={device}")))
    kept = json.loads(ca_env.run("audit", "verify", "--json").stdout)["head"]
    seq = int(kept.split(":")[0])
    engine = sa.create_engine(ca_env.database_url)
    try:
        with engine.begin() as c:                 # roll back lock-8's issuance: intent and issued events
            previous = c.exec_driver_sql(f"SELECT hash FROM audit_events WHERE seq = {seq - 2}").scalar()
            c.exec_driver_sql(f"DELETE FROM audit_events WHERE seq > {seq - 2}")
            c.exec_driver_sql(f"UPDATE audit_head SET seq = {seq - 2}, hash = '{previous}'")
        proc = ca_env.run("audit", "verify", check=False)      # lock-8's certificate has lost its event
        assert proc.returncode == 12 and b"has no issuance event" in proc.stderr, proc.stderr
        with engine.begin() as c:                 # ... so the attacker removes the certificate too
            c.exec_driver_sql("DELETE FROM certificates WHERE device_id = 'lock-8'")
        assert ca_env.run("audit", "verify").returncode == 0            # consistent: alone, it cannot tell
        proc = ca_env.run("audit", "verify", "--expect-head", kept, check=False)
        assert proc.returncode == 12 and f"no longer holds event {seq}".encode() in proc.stderr, proc.stderr
        assert ca_env.run("audit", "verify", "--expect-head", f"{seq - 2}:{previous}").returncode == 0
        with engine.begin() as c:
            at = c.exec_driver_sql("SELECT at FROM audit_events WHERE seq = 2").scalar()
            edited = at[:19] + ".250000" if isinstance(at, str) else at.replace(microsecond=250000)   # SQLite: text
            c.execute(sa.text("UPDATE audit_events SET at = :at WHERE seq = 2"), {"at": edited})
    finally:
        engine.dispose()
    proc = ca_env.run("audit", "verify", check=False)
    assert proc.returncode == 12 and b"event 2: its time has a fraction of a second" in proc.stderr, proc.stderr


@pytest.mark.parametrize("what, env, fragment", [
    ("wrong PIN", {"DEVICE_CA_HSM_PIN": "not-the-pin"}, b"PIN"),
    ("token missing", {"DEVICE_CA_HSM_TOKEN": "no-such-token"}, b"no-such-token"),
    ("module missing", {"DEVICE_CA_HSM_MODULE": "/nonexistent/libpkcs11.so"}, b"/nonexistent/libpkcs11.so"),
])
def test_hsm_faults_are_one_line_errors_and_nothing_is_issued(ca_env, tmp_path, what, env, fragment):
    csr = openssl_csr(tmp_path, "lock", "/O=BuildingCo/OU=door-lock/CN=lock-9")
    if "DEVICE_CA_HSM_PIN" in env:
        env = {**env, "DEVICE_CA_HSM_PIN_FILE": ""}
    proc = ca_env.run("issue", "--policy", "door-lock", "--csr", str(csr), check=False, **env)
    assert proc.returncode == 9, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and b"Traceback" not in proc.stderr
    assert ca_env.pin.encode() not in proc.stderr and b"not-the-pin" not in proc.stderr
    assert json.loads(ca_env.run("list", "--json").stdout) == []


@pytest.mark.slow
@pytest.mark.parametrize("key_type", ["ec:P-384", "rsa:3072"])
def test_other_ca_key_types(tmp_path, database_url, key_type):
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--key-type", key_type)
    csr = openssl_csr(tmp_path, "lock", "/O=BuildingCo/OU=door-lock/CN=lock-3", curve="P-384")
    cert = tmp_path / "lock.pem"
    env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--out", str(cert))
    verify = openssl("verify", "-CAfile", str(env.ca_dir / "root.pem"), "-untrusted", str(env.ca_dir / "issuing.pem"),
                     str(cert))
    assert verify.returncode == 0, verify.stderr
    assert _lint("lint_pkix_cert", cert) == []
    sig = openssl("x509", "-in", str(cert), "-noout", "-text").stdout
    assert ("ecdsa-with-SHA384" if key_type == "ec:P-384" else "sha256WithRSAEncryption") in sig


def _rows(c, sql):
    return [dict(r) for r in c.execute(sa.text(sql)).mappings()]


def test_signed_checkpoints_catch_a_chain_rewritten_consistently(ca_env, tmp_path):
    """Attack (issue 14, item 10, checkpoints): an event is edited and every hash after it, and the
    head, recomputed: the chain alone is consistent, but the checkpoint signed on the token no
    longer matches it (exit 12). A checkpoint forged with another key is reported as a bad signature."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from device_ca.store.audit import event_hash

    for device in ("lock-7", "lock-8"):
        ca_env.run("issue", "--policy", "door-lock", "--csr",
                   str(openssl_csr(tmp_path, device, f"/O=BuildingCo/OU=door-lock/CN={device}")))
    signed = json.loads(ca_env.run("audit", "checkpoint").stdout)
    report = json.loads(ca_env.run("audit", "verify", "--json").stdout)
    assert report["ok"] and report["checkpoints"] == 1 and report["head"] == f"{signed['seq']}:{signed['head']}"
    engine = sa.create_engine(ca_env.database_url)
    try:
        with engine.begin() as c:
            events = _rows(c, "SELECT * FROM audit_events ORDER BY seq")
            prev = events[0]["hash"]
            for e in events[1:]:
                actor = "someone-else" if e["seq"] == 2 else e["actor"]
                at = e["at"] if not isinstance(e["at"], str) else dt.datetime.fromisoformat(e["at"])
                at = at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc)
                digest = event_hash(e["seq"], at, e["action"], actor, e["serial"], e["device_id"], e["details"], prev)
                c.execute(sa.text("UPDATE audit_events SET actor = :a, prev_hash = :p, hash = :h WHERE seq = :s"),
                          {"a": actor, "p": prev, "h": digest, "s": e["seq"]})
                prev = digest
            c.execute(sa.text("UPDATE audit_head SET hash = :h"), {"h": prev})
        proc = ca_env.run("audit", "verify", check=False)
        assert proc.returncode == 12, proc.stderr
        problems = [line for line in proc.stderr.decode().splitlines() if line.startswith("audit:")]
        assert problems == [f"audit: checkpoint of event {signed['seq']} at {signed['at']}: the chain no longer "
                            "holds that event with the signed hash (rewritten, rolled back or truncated)"], problems
        forger = ec.generate_private_key(ec.SECP256R1())
        at = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        forged = (f"device-ca audit checkpoint\nseq {signed['seq']}\nhead {prev}\n"
                  f"at {at:%Y-%m-%dT%H:%M:%SZ}\n").encode()
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO audit_checkpoints (seq, head_hash, at, signature) VALUES (:s, :h, :a, :g)"),
                      {"s": signed["seq"], "h": prev, "a": at, "g": forger.sign(forged, ec.ECDSA(hashes.SHA256()))})
        proc = ca_env.run("audit", "verify", check=False)
        assert proc.returncode == 12 and b"bad signature (not made by the token's audit key)" in proc.stderr, proc.stderr
    finally:
        engine.dispose()


def test_verify_cross_checks_the_certificates_table_against_the_chain(ca_env, tmp_path):
    """Attack (issue 14, item 10, cross-check): a certificate row inserted without issuance, a
    certificate marked revoked without a revocation, an issued certificate's row deleted: the
    chain itself is intact, and verify reports each (exit 12)."""
    serials = {}
    for device in ("lock-7", "lock-8", "lock-9"):
        out = ca_env.run("issue", "--policy", "door-lock", "--csr",
                         str(openssl_csr(tmp_path, device, f"/O=BuildingCo/OU=door-lock/CN={device}"))).stderr
        serials[device] = out.decode().split("issued serial ")[1].split()[0]
    assert ca_env.run("audit", "verify").returncode == 0
    engine = sa.create_engine(ca_env.database_url)
    try:
        with engine.begin() as c:
            planted = "7" * 36
            reservation = _rows(c, f"SELECT * FROM serial_reservations WHERE serial = '{serials['lock-7']}'")[0]
            reservation.update(serial=planted)
            c.execute(sa.text(f"INSERT INTO serial_reservations ({', '.join(reservation)}) "
                              f"VALUES ({', '.join(':' + k for k in reservation)})"), reservation)
            row = _rows(c, f"SELECT * FROM certificates WHERE serial = '{serials['lock-7']}'")[0]
            row.update(serial=planted, fingerprint="f" * 64)
            c.execute(sa.text(f"INSERT INTO certificates ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})"),
                      row)
            c.execute(sa.text("UPDATE certificates SET status = 'revoked' WHERE serial = :s"), {"s": serials["lock-8"]})
            c.execute(sa.text("INSERT INTO revocations (serial, reason, revoked_at, actor) VALUES (:s, 'unspecified', "
                              ":t, 'intruder')"), {"s": serials["lock-8"], "t": dt.datetime.now(dt.timezone.utc)})
            c.execute(sa.text("DELETE FROM certificates WHERE serial = :s"), {"s": serials["lock-9"]})
    finally:
        engine.dispose()
    proc = ca_env.run("audit", "verify", check=False)
    assert proc.returncode == 12, proc.stderr
    problems = sorted(line for line in proc.stderr.decode().splitlines() if line.startswith("audit:"))
    assert problems == sorted([
        f"audit: certificate {planted} has no issuance event (inserted outside issuance, or its event deleted)",
        f"audit: certificate {serials['lock-8']} is revoked without a revocation event",
        f"audit: certificate {serials['lock-9']} has an issuance event but its certificate row is gone"]), problems


def test_a_responder_key_missing_or_ambiguous_is_replaced_not_refused_forever(ca_env):
    """Issue 17, item 1 (key labels): responder key labels are unique (two nodes starting in the
    same second made two keys under one label, and every start then exited 11). A start that finds
    the active responder's key ambiguous on the token, or gone, makes a new responder instead."""
    import re

    def pkcs11(*args: str) -> None:
        proc = subprocess.run(["pkcs11-tool", "--module", MODULE, "--token-label", ca_env.token, "--login",
                               "--pin", "env:TEST_PIN", *args], capture_output=True, text=True,
                              env={**ca_env.env, "TEST_PIN": ca_env.pin})
        assert proc.returncode == 0, proc.stderr

    def active_label() -> str:
        engine = sa.create_engine(ca_env.database_url)
        with engine.connect() as c:
            label = c.execute(sa.text("SELECT key_label FROM ocsp_responders ORDER BY id DESC")).scalars().first()
        engine.dispose()
        return label

    ca_env.run("ocsp", "refresh")
    first = active_label()
    assert re.fullmatch(r"device-ca-ocsp-\d{14}-[0-9a-f]{12}", first), first
    assert b"current OCSP responder" in ca_env.run("ocsp", "refresh").stdout

    pkcs11("--keypairgen", "--key-type", "EC:prime256v1", "--label", first)      # a second key under its label
    assert b"new OCSP responder" in ca_env.run("ocsp", "refresh").stdout
    second = active_label()
    assert second != first

    pkcs11("--delete-object", "--type", "privkey", "--label", second)            # a row whose key is gone
    assert b"new OCSP responder" in ca_env.run("ocsp", "refresh").stdout
    assert active_label() not in (first, second)
    assert b"current OCSP responder" in ca_env.run("ocsp", "refresh").stdout
