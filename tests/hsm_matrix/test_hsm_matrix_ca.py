"""The CA end to end on each PKCS#11 module of the matrix (SoftHSM, openCryptoki, tpm2-pkcs11 on swtpm):
``device-ca init``, ``issue``, EST enrollment and re-enrollment with curl, revocation, OCSP and CRL
checked with openssl, ``ocsp refresh``, a bulk batch of 200; then the module's daemon stopped under a
running server (503 + Retry-After, OCSP tryLater, CLI exit 9) and started again."""
from __future__ import annotations

import base64
import ctypes
import csv
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from helpers import make_csr
from integration.cli_harness import CaEnv, openssl, openssl_csr
from integration.est_pki import device_csr, pkcs7_certificates

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.hsm_matrix]

BULK = 200


def _ca_env(module, tmp_path: Path, database_url: str) -> CaEnv:
    """A state directory and database for a new CA on ``module``'s token, whose device-ca keys (left by
    an earlier test on the same token) are destroyed first."""
    module.probe("wipe")
    home = tmp_path / "home"
    home.mkdir()
    return CaEnv(home=home, token=module.label, pin=module.pin, database_url=database_url,
                 extra=dict(module.provisioner.env()))


def _crl_serial(serial: str) -> str:
    """How `openssl crl -text` prints a serial: upper-case hex of an even number of digits."""
    serial = serial.upper()
    return "0" + serial if len(serial) % 2 else serial


def _ocsp(env: CaEnv, server, cert: Path) -> tuple[str, str]:
    """(status, the whole output) of `openssl ocsp` against the server; the response must verify."""
    proc = openssl("ocsp", "-issuer", str(env.ca_dir / "issuing.pem"), "-cert", str(cert), "-url",
                   f"{server.http}/ocsp", "-CAfile", str(env.ca_dir / "root.pem"), "-timeout", "20")
    assert proc.returncode == 0 and "Response verify OK" in proc.stderr, proc.stdout + proc.stderr
    return proc.stdout.split(": ", 1)[1].splitlines()[0].strip(), proc.stdout


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as response:
        return response.read()


def _serial(cert_pem: Path) -> str:
    return format(x509.load_pem_x509_certificate(cert_pem.read_bytes()).serial_number, "x")


def test_ca_end_to_end(pkcs11_module, tmp_path, database_url, serve):
    module = pkcs11_module
    env = _ca_env(module, tmp_path, database_url)
    if module.ca_key_type != "ec:P-256":           # the default key type, where the token cannot make it
        refused = env.run("init", "--organization", "BuildingCo", check=False)
        assert refused.returncode == 9, refused.stderr
        assert b"cannot make ec:P-256 keys" in refused.stderr
        assert json.loads(env.run("hsm", "info", "--json").stdout)["objects"] == []  # nothing made
    env.run("init", "--organization", "BuildingCo", "--key-type", module.ca_key_type)

    info = json.loads(env.run("hsm", "info", "--json").stdout)
    assert info["token"]["module"] == module.path and info["token"]["label"] == module.label
    private = {o["label"]: o for o in info["objects"] if o["class"] == "private_key"}
    assert {"device-ca-root", "device-ca-issuing", "device-ca-audit"} <= set(private)
    for obj in private.values():
        assert obj["sensitive"] and obj["always_sensitive"] and obj["never_extractable"] and not obj["extractable"]
    text = env.run("hsm", "info").stdout.decode()
    assert module.pin not in text and "mechanisms device-ca uses" in text

    # issue with the CLI; the certificate chains to the CA made on this token
    csr = openssl_csr(tmp_path, "lock-1", "/O=BuildingCo/OU=door-lock/CN=lock-1")
    lock = tmp_path / "lock-1.pem"
    env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--device-id", "lock-1", "--out", str(lock))
    verified = openssl("verify", "-CAfile", str(env.ca_dir / "root.pem"), "-untrusted",
                       str(env.ca_dir / "issuing.pem"), str(lock))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    server = serve(env, "--rate-limit", "0")

    # EST enrollment with a bootstrap token, then re-enrollment with the certificate (curl)
    secret = env.run("token", "create", "--policy", "badge-reader", "--device-id", "br-1").stdout.decode().strip()
    key, body = device_csr(tmp_path, "br-1", "/O=BuildingCo/OU=badge-reader/CN=br-1", san="URI:urn:dev:org:32473-br-1")
    status, answer, _ = server.curl("/badge-reader/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                    "-u", f"br-1:{secret}", body=body)
    assert status == 200, answer
    first = tmp_path / "br-1.pem"
    first.write_bytes(pkcs7_certificates(answer)[0].public_bytes(Encoding.PEM))
    _, body = device_csr(tmp_path, "br-1-again", "/O=BuildingCo/OU=badge-reader/CN=br-1",
                         san="URI:urn:dev:org:32473-br-1", key=key)
    status, answer, _ = server.curl("/badge-reader/simplereenroll", "-H", "Content-Type: application/pkcs10",
                                    "--cert", str(first), "--key", str(key), body=body)
    assert status == 200, answer
    renewed = tmp_path / "br-1-renewed.pem"
    renewed.write_bytes(pkcs7_certificates(answer)[0].public_bytes(Encoding.PEM))
    assert _serial(renewed) != _serial(first)

    # OCSP: good; revoked once revoked (live, then pre-signed after `ocsp refresh`)
    assert _ocsp(env, server, lock)[0] == "good"
    env.run("revoke", _serial(lock), "--reason", "keyCompromise")
    status, out = _ocsp(env, server, lock)
    assert status == "revoked" and "Reason: keyCompromise" in out, out
    assert b"OCSP responder" in env.run("ocsp", "refresh").stdout
    assert _ocsp(env, server, lock)[0] == "revoked"
    assert _ocsp(env, server, renewed)[0] == "good"

    # CRL: signed by the token's issuing key, lists the revoked serial; openssl refuses the revoked certificate
    env.run("crl", "generate")
    crl = tmp_path / "issuing.crl"
    deadline = time.monotonic() + 30                   # the server picks up the new CRL
    while True:
        crl.write_bytes(_get(f"{server.http}/crl/issuing.crl"))
        listed = x509.load_der_x509_crl(crl.read_bytes()).get_revoked_certificate_by_serial_number(int(_serial(lock), 16))
        if listed is not None or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    checked = openssl("crl", "-inform", "DER", "-in", str(crl), "-CAfile", str(env.ca_dir / "chain.pem"), "-noout",
                      "-text")
    assert checked.returncode == 0 and "verify OK" in checked.stderr, checked.stdout + checked.stderr
    assert f"Serial Number: {_crl_serial(_serial(lock))}" in checked.stdout
    crl_pem = tmp_path / "issuing-crl.pem"
    crl_pem.write_text(openssl("crl", "-inform", "DER", "-in", str(crl)).stdout)
    chain = tmp_path / "trust.pem"
    chain.write_bytes((env.ca_dir / "root.pem").read_bytes() + (env.ca_dir / "issuing.pem").read_bytes())
    revoked = openssl("verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", str(crl_pem), str(lock))
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr
    good = openssl("verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", str(crl_pem), str(renewed))
    assert good.returncode == 0, good.stdout + good.stderr

    # bulk: 200 certificates, each once, all verifying
    batch = tmp_path / "batch.jsonl"
    with batch.open("w") as f:
        for n in range(BULK):
            device = f"env-{n:04x}"
            der = make_csr(device, ou="env-sensor", encoding=Encoding.DER)
            f.write(json.dumps({"device_id": device, "csr": base64.b64encode(der).decode()}) + "\n")
    out = tmp_path / "bulk"
    started = time.monotonic()
    env.run("bulk", "issue", "--policy", "env-sensor", "--jsonl", str(batch), "--out", str(out))
    elapsed = time.monotonic() - started
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == BULK and len({r["serial"] for r in rows}) == BULK
    pems = sorted(str(p) for p in out.glob("*.pem"))
    assert len(pems) == BULK
    bulk_ok = openssl("verify", "-CAfile", str(env.ca_dir / "root.pem"), "-untrusted", str(env.ca_dir / "issuing.pem"),
                      *pems)
    assert bulk_ok.returncode == 0 and bulk_ok.stdout.count(": OK") == BULK, bulk_ok.stdout[-2000:]
    print(f"{module.kind}: bulk of {BULK} in {elapsed:.1f} s ({BULK / elapsed:.0f}/s)")

    # the audit chain and its checkpoints (signed by the token's audit key) verify
    env.run("audit", "checkpoint")
    env.run("audit", "verify")


def test_module_outage_under_a_running_server(pkcs11_module, tmp_path, database_url, serve):
    """The module's daemon (pkcsslotd, tpm2-abrmd) or SoftHSM's token directory goes away under a running
    server. SoftHSM and the TPM: EST answers 503 with Retry-After and issues nothing. openCryptoki: the
    server's open sessions do not need pkcsslotd and go on signing. Every module: a new process (the
    CLI) exits 9 naming the failure; once it is back, the same server issues again."""
    module = pkcs11_module
    env = _ca_env(module, tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo", "--key-type", module.ca_key_type)
    server = serve(env, "--rate-limit", "0")

    def enroll(device: str) -> tuple[int, dict]:
        secret = env.run("token", "create", "--policy", "badge-reader", "--device-id", device).stdout.decode().strip()
        _, body = device_csr(tmp_path, f"{device}-{time.monotonic_ns()}", f"/O=BuildingCo/OU=badge-reader/CN={device}",
                             san=f"URI:urn:dev:org:32473-{device}")
        status, answer, headers = server.curl("/badge-reader/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                              "-u", f"{device}:{secret}", body=body)
        if status == 200:
            (tmp_path / f"{device}.pem").write_bytes(pkcs7_certificates(answer)[0].public_bytes(Encoding.PEM))
        return status, headers

    assert enroll("br-10")[0] == 200
    restore = _take_away(module)
    try:
        status, headers = enroll("br-11")
        listed = json.loads(env.run("list", "--device-id", "br-11", "--json").stdout)
        if module.kind == "opencryptoki":
            assert status == 200 and len(listed) == 1    # pkcsslotd only admits new processes
        else:
            assert status == 503 and headers.get("retry-after"), (status, headers)
            assert listed == []                          # refused, nothing issued
        # OCSP: a pre-signed answer, or tryLater when it would have to sign; never an error or silence
        asked = openssl("ocsp", "-issuer", str(env.ca_dir / "issuing.pem"), "-cert", str(tmp_path / "br-10.pem"),
                        "-url", f"{server.http}/ocsp", "-CAfile", str(env.ca_dir / "root.pem"), "-timeout", "20")
        assert (asked.returncode == 0 and "Response verify OK" in asked.stderr and ": good" in asked.stdout) or \
            "Responder Error: trylater (3)" in asked.stdout, asked.stdout + asked.stderr
        failed = env.run("hsm", "info", check=False)
        assert failed.returncode == 9, failed.stderr
        assert module.pin.encode() not in failed.stderr + failed.stdout
        print(f"{module.kind} away: {failed.stderr.decode().strip()}")
    finally:
        restore()
    deadline, attempt = time.monotonic() + 60, 12
    while True:                                        # the token's retry interval is short; allow a minute
        status, _ = enroll(f"br-{attempt}")
        if status == 200 or time.monotonic() > deadline:
            break
        attempt += 1
        time.sleep(1)
    assert status == 200


def _take_away(module):
    """Make the module unusable; a function that brings it back."""
    if module.kind == "softhsm":
        tokens = module.provisioner.directory / "tokens"
        aside = tokens.with_name("tokens-away")
        tokens.rename(aside)
        tokens.mkdir()

        def back() -> None:
            tokens.rmdir()
            aside.rename(tokens)
        return back
    daemon = {"opencryptoki": "pkcsslotd", "tpm": "tpm2-abrmd"}[module.kind]
    pids = module.provisioner._pids()
    pid = pids[daemon]
    segments = _slot_daemon_memory() if module.kind == "opencryptoki" else []
    # pkcsslotd ignores SIGTERM while processes use the token: it is killed, as by a crash.
    os.kill(pid, signal.SIGKILL if module.kind == "opencryptoki" else signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    for shmid in segments:
        # pkcsslotd's System V segment outlives it, and new processes attach to it without the daemon;
        # after a reboot it is gone: remove it, as a reboot would (processes attached keep their mapping).
        subprocess.run(["ipcrm", "-m", shmid], check=True)
    return module.restart


def _slot_daemon_memory() -> list[str]:
    """The shmid of pkcsslotd's System V segment, whose key openCryptoki 3.8 makes with
    ftok("/usr/sbin/pkcsslotd", 'b') (``ipcs -m``: key shmid owner ...)."""
    key = ctypes.CDLL(None).ftok(b"/usr/sbin/pkcsslotd", ord("b")) & 0xFFFFFFFF
    out = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, check=True).stdout
    return [fields[1] for fields in (line.split() for line in out.splitlines())
            if len(fields) >= 2 and fields[0].startswith("0x") and int(fields[0], 16) == key]
