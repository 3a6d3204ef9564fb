"""Issuing-CA rollover against SoftHSM, the real CLI and a running `device-ca serve` (SQLite or
PostgreSQL) that is not restarted: devices enrolled before `ca rollover` and after it both validate
with openssl (chain with -crl_check_all on the CRLs each certificate points at, OCSP with each
issuer), cacerts serves both generations newest first and the root, devices of the old generation
re-enroll into the new one over EST with curl (mutual TLS) and with estclient, a device of the new
generation re-enrolls over mutual TLS, and the metrics name each generation. Keycloak's clients name the root, which a
rollover does not change; test_keycloak.py checks that and Keycloak's restart with ca/trust.pem."""
from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from integration.cli_harness import new_ca_env, openssl
from integration.est_pki import device_csr, pkcs7_certificates, simpleenroll
from integration.server_harness import free_port
from device_ca.web.server import FOLLOW_SECONDS
from integration.tls_tools import estclient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS = 2          # HTTPS workers: each follows the rollover on its own


def _token(env, policy, device):
    return env.run("token", "create", "--policy", policy, "--device-id", device).stdout.decode().strip()


def _estclient_base(server, label):
    return ["-server", f"127.0.0.1:{server.port}", "-explicit", str(server.chain), "-aps", label]


@pytest.fixture(scope="module")
def rolled(tmp_path_factory, module_database_url, module_serve):
    """Devices br-1 (curl) and br-5 (estclient) enrolled under the first issuing CA, then `ca rollover`
    while the server runs: its workers follow without a restart, and device br-2 is enrolled under
    the new generation by the same server."""
    tmp = tmp_path_factory.mktemp("rollover")
    env = new_ca_env(tmp, module_database_url)
    http_port = free_port()
    env.extra["DEVICE_CA_PUBLIC_URL"] = base = f"http://127.0.0.1:{http_port}"
    env.run("init", "--organization", "BuildingCo")
    server = module_serve.launch(env, "--rate-limit", "0", "--http-port", str(http_port), "--workers", str(WORKERS))
    server.http_port = http_port
    server.wait_ready()
    for _ in range(4 * WORKERS):
        assert len(pkcs7_certificates(server.curl("/cacerts")[1])) == 2
    status, body, _ = simpleenroll(server, tmp, "br-1", _token(env, "badge-reader", "br-1"))
    assert status == 200, body
    (tmp / "br-1.pem").write_bytes(pkcs7_certificates(body)[0].public_bytes(Encoding.PEM))
    status, body, _ = simpleenroll(server, tmp, "br-3", _token(env, "badge-reader", "br-3"))
    assert status == 200, body
    (tmp / "br-3.pem").write_bytes(pkcs7_certificates(body)[0].public_bytes(Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp / "br-5.key").write_bytes(key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    config = tmp / "br-5-est.json"
    config.write_text(json.dumps({"username": "br-5", "password": _token(env, "badge-reader", "br-5")}))
    config.chmod(0o600)
    out = estclient("enroll", *_estclient_base(server, "badge-reader"), "-config", config, "-key", tmp / "br-5.key",
                    "-cn", "br-5", "-ou", "badge-reader", "-org", "BuildingCo", "-out", tmp / "br-5.pem")
    assert out.returncode == 0, out.stderr

    rolled_over = env.run("ca", "rollover")
    assert rolled_over.stdout.startswith(b"new issuing CA issuing-2: CN=BuildingCo Device Issuing CA G2"), \
        rolled_over.stdout
    assert b"no restart needed" in rolled_over.stderr
    # a janitor round makes the new generation's CRL and responder; then each worker, within its next
    # follow round, issues with it and writes the node's client-CA bundle with it
    new_pem, bundle = (env.ca_dir / "issuing-2.pem").read_bytes(), env.home / "tls" / "client-ca.pem"
    deadline = time.monotonic() + 30
    while new_pem not in bundle.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert new_pem in bundle.read_bytes(), server.log.read_text()[-3000:]
    time.sleep(FOLLOW_SECONDS + 1)                      # the other workers' rounds
    assert server.process.poll() is None
    status, body, _ = simpleenroll(server, tmp, "br-2", _token(env, "badge-reader", "br-2"))
    assert status == 200, body
    (tmp / "br-2.pem").write_bytes(pkcs7_certificates(body)[0].public_bytes(Encoding.PEM))
    return env, server, base, tmp


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return r.read()


def _crls_pem(base, tmp, names) -> str:
    pem = b"".join(subprocess.run(["openssl", "crl", "-inform", "DER"], input=_get(f"{base}/crl/{n}.crl"),
                                  capture_output=True, check=True).stdout for n in names)
    path = tmp / "crls.pem"
    path.write_bytes(pem)
    return str(path)


def _issuer_file(env, leaf_path) -> str:
    leaf = x509.load_pem_x509_certificate(leaf_path.read_bytes())
    name = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value \
        .rsplit("/", 1)[1].removesuffix(".crl")
    return str(env.ca_dir / f"{name}.pem")


def test_both_generations_validate_with_openssl_chain_crl_and_ocsp(rolled):
    env, server, base, tmp = rolled
    listed = {r["name"]: r for r in json.loads(env.run("ca", "list", "--json").stdout)}
    assert (listed["issuing"]["state"], listed["issuing-2"]["state"]) == ("previous", "current")
    assert listed["issuing"]["good"] >= 3 and listed["issuing-2"]["good"] >= 1
    a, b = tmp / "br-1.pem", tmp / "br-2.pem"
    assert _issuer_file(env, a).endswith("/issuing.pem") and _issuer_file(env, b).endswith("/issuing-2.pem")
    crls = _crls_pem(base, tmp, ("root", "issuing", "issuing-2"))
    untrusted = tmp / "issuing-cas.pem"
    untrusted.write_bytes((env.ca_dir / "issuing.pem").read_bytes() + (env.ca_dir / "issuing-2.pem").read_bytes())
    for leaf in (a, b):
        verified = openssl("verify", "-CAfile", str(env.ca_dir / "root.pem"), "-untrusted", str(untrusted),
                           "-crl_check_all", "-CRLfile", crls, str(leaf))
        assert verified.returncode == 0 and f"{leaf}: OK" in verified.stdout, verified.stdout + verified.stderr
        answered = openssl("ocsp", "-issuer", _issuer_file(env, leaf), "-cert", str(leaf), "-url", f"{base}/ocsp",
                           "-CAfile", str(env.ca_dir / "root.pem"), "-timeout", "10")
        assert answered.returncode == 0 and "Response verify OK" in answered.stderr, answered.stdout + answered.stderr
        assert f"{leaf}: good" in answered.stdout, answered.stdout
    # a CertID of one generation's serial with the other generation as issuer: not that issuer's certificate
    crossed = openssl("ocsp", "-issuer", str(env.ca_dir / "issuing-2.pem"), "-cert", str(a), "-url", f"{base}/ocsp",
                      "-CAfile", str(env.ca_dir / "root.pem"), "-timeout", "10")
    assert "good" not in crossed.stdout, crossed.stdout
    # a revocation in the old generation shows in its own CRL and OCSP
    serial = format(x509.load_pem_x509_certificate(a.read_bytes()).serial_number, "x")
    env.run("revoke", serial, "--reason", "keyCompromise")
    server.wait_ready()
    for _ in range(40):
        answered = openssl("ocsp", "-issuer", _issuer_file(env, a), "-cert", str(a), "-url", f"{base}/ocsp",
                           "-CAfile", str(env.ca_dir / "root.pem"), "-timeout", "10")
        if f"{a}: revoked" in answered.stdout:
            break
        time.sleep(0.5)
    assert f"{a}: revoked" in answered.stdout, answered.stdout


def test_cacerts_serves_both_generations_newest_first_and_the_root(rolled):
    env, server, _, _ = rolled
    for _ in range(4 * WORKERS):         # every worker (each had answered cacerts before the rollover)
        status, body, _ = server.curl("/cacerts")
        assert status == 200
        assert [c.subject.rfc4514_string() for c in pkcs7_certificates(body)] == [
            "CN=BuildingCo Device Issuing CA G2,O=BuildingCo", "CN=BuildingCo Device Issuing CA,O=BuildingCo",
            "CN=BuildingCo Root CA,O=BuildingCo"]


def test_old_generation_reenrolls_into_the_new_one_with_curl_and_estclient(rolled):
    env, server, _, tmp = rolled
    new_ca = x509.load_pem_x509_certificate((env.ca_dir / "issuing-2.pem").read_bytes())
    out = estclient("reenroll", *_estclient_base(server, "badge-reader"), "-certs", tmp / "br-5.pem",
                    "-key", tmp / "br-5.key", "-out", tmp / "br-5-2.pem")
    assert out.returncode == 0, out.stderr
    renewed = x509.load_pem_x509_certificate((tmp / "br-5-2.pem").read_bytes())
    assert renewed.issuer == new_ca.subject
    renewed.verify_directly_issued_by(new_ca)

    # with curl over mutual TLS: br-3 (old generation) renews into the new one; br-1, revoked above, cannot
    _, body = device_csr(tmp, "br-3-renew", "/O=BuildingCo/OU=badge-reader/CN=br-3", san="URI:urn:dev:org:32473-br-3",
                         key=tmp / "br-3.key")
    status, data, _ = server.curl("/badge-reader/simplereenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(tmp / "br-3.pem"), "--key", str(tmp / "br-3.key"), body=body)
    assert status == 200, data
    (renewed,) = pkcs7_certificates(data)
    renewed.verify_directly_issued_by(new_ca)
    listed = {c["serial"]: c for c in json.loads(env.run("list", "--device-id", "br-3", "--json").stdout)}
    assert len(listed) == 2 and all(c["status"] == "good" for c in listed.values())
    _, body = device_csr(tmp, "br-1-renew", "/O=BuildingCo/OU=badge-reader/CN=br-1", san="URI:urn:dev:org:32473-br-1",
                         key=tmp / "br-1.key")
    status, data, _ = server.curl("/badge-reader/simplereenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(tmp / "br-1.pem"), "--key", str(tmp / "br-1.key"), body=body)
    assert status == 403 and b"revoked" in data, (status, data)


def test_the_running_server_trusts_serves_and_counts_the_new_generation(rolled):
    env, server, base, tmp = rolled
    new_ca = x509.load_pem_x509_certificate((env.ca_dir / "issuing-2.pem").read_bytes())
    assert x509.load_der_x509_certificate(_get(f"{base}/ca/issuing-2.crt")) == new_ca     # its AIA caIssuers
    new_pem = (env.ca_dir / "issuing-2.pem").read_bytes()
    assert new_pem in (env.home / "tls" / "client-ca.pem").read_bytes() and new_pem in (env.ca_dir / "trust.pem").read_bytes()
    # br-2's certificate, of the new generation, passes the handshake (a certificate that does not
    # verify fails it) on whichever worker takes the connection: each worker's TLS context trusts issuing-2
    for _ in range(4 * WORKERS):
        status, _, _ = server.curl("/cacerts", "--cert", str(tmp / "br-2.pem"), "--key", str(tmp / "br-2.key"))
        assert status == 200
    _, body = device_csr(tmp, "br-2-renew", "/O=BuildingCo/OU=badge-reader/CN=br-2", san="URI:urn:dev:org:32473-br-2",
                         key=tmp / "br-2.key")
    status, data, _ = server.curl("/badge-reader/simplereenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(tmp / "br-2.pem"), "--key", str(tmp / "br-2.key"), body=body)
    assert status == 200, (status, data)
    (renewed,) = pkcs7_certificates(data)
    renewed.verify_directly_issued_by(new_ca)
    answered = openssl("ocsp", "-issuer", str(env.ca_dir / "issuing-2.pem"), "-cert", str(tmp / "br-2.pem"),
                       "-url", f"{base}/ocsp", "-CAfile", str(env.ca_dir / "root.pem"), "-timeout", "10")
    assert "Response verify OK" in answered.stderr, answered.stdout + answered.stderr
    metrics = _get(f"{base}/metrics").decode()
    assert 'device_ca_crl_number{ca="issuing-2"}' in metrics and 'device_ca_crl_number{ca="issuing"}' in metrics
    assert any(line.startswith("device_ca_ocsp_answers_total{") and 'ca="issuing-2"' in line
               for line in metrics.splitlines()), metrics
