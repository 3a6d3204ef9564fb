"""The operator's walk-through with the real CLI, SoftHSM token, openssl and pkilint.

Every command runs as a separate `device-ca` process, as an operator would run it.
"""
from __future__ import annotations

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
        {"device-ca-root", "device-ca-issuing"}
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
