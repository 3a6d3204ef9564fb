"""The third-party Go EST client (globalsign/est estclient) against `device-ca serve`.

Bootstrap secrets go to estclient through a -config JSON file in the test's directory, never
on its command line.
"""
from __future__ import annotations

import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from integration.cli_harness import new_ca_env, openssl
from integration.est_pki import Manufacturer
from integration.server_harness import policy_dir_with
from integration.tls_tools import estclient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_database_url, module_serve):
    tmp = tmp_path_factory.mktemp("estclient")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    acme = Manufacturer(tmp, "Acme")
    policies = policy_dir_with(tmp, {
        "factory-lock": f'subject = "CN={{device_id}},OU=factory-lock,O=BuildingCo"\n'
                        f'enrollment = ["idevid"]\nmanufacturer_cas = ["{acme.pem}"]\n'})
    return env, module_serve(env, "--rate-limit", "0", policy_dir=policies), tmp, acme


def _base(server, label=None):
    args = ["-server", f"127.0.0.1:{server.port}", "-explicit", str(server.chain)]
    return args + (["-aps", label] if label else [])


def _config(tmp, device, secret):
    path = tmp / f"{device}-est.json"
    path.write_text(json.dumps({"username": device, "password": secret}))
    path.chmod(0o600)
    return path


def _key(tmp, name):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp / f"{name}.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def test_cacerts_and_csrattrs(served):
    env, server, tmp, _ = served
    out = estclient("cacerts", *_base(server))
    assert out.returncode == 0, out.stderr
    certs = x509.load_pem_x509_certificates(out.stdout.encode())
    assert [c.subject.rfc4514_string() for c in certs][1] == "CN=BuildingCo Root CA,O=BuildingCo"
    out = estclient("csrattrs", *_base(server, "door-lock"))
    assert out.returncode == 0, out.stderr
    assert "1.2.840.10045.2.1" in out.stdout and "1.2.840.10045.3.1.7" in out.stdout and "1.3.132.0.34" in out.stdout


def test_enroll_with_token_then_reenroll_with_certificate(served):
    env, server, tmp, _ = served
    secret = env.run("token", "create", "--policy", "badge-reader", "--device-id", "br-31").stdout.decode().strip()
    key = _key(tmp, "br-31")
    cert = tmp / "br-31.pem"
    out = estclient("enroll", *_base(server, "badge-reader"), "-config", _config(tmp, "br-31", secret),
                    "-key", key, "-cn", "br-31", "-ou", "badge-reader", "-org", "BuildingCo", "-out", cert)
    assert out.returncode == 0, out.stderr
    verify = openssl("verify", "-CAfile", str(env.ca_dir / "root.pem"), "-untrusted", str(env.ca_dir / "issuing.pem"),
                     str(cert))
    assert verify.returncode == 0, verify.stderr
    first = x509.load_pem_x509_certificate(cert.read_bytes())
    assert first.subject.rfc4514_string() == "CN=br-31,OU=badge-reader,O=BuildingCo"
    again = estclient("enroll", *_base(server, "badge-reader"), "-config", _config(tmp, "br-31", secret),
                      "-key", key, "-cn", "br-31", "-ou", "badge-reader", "-org", "BuildingCo")
    assert again.returncode == 1 and "already used" in again.stderr
    renewed = tmp / "br-31-renewed.pem"
    out = estclient("reenroll", *_base(server, "badge-reader"), "-certs", cert, "-key", key, "-out", renewed)
    assert out.returncode == 0, out.stderr
    second = x509.load_pem_x509_certificate(renewed.read_bytes())
    assert second.serial_number != first.serial_number and second.public_key() == first.public_key()
    listed = json.loads(env.run("list", "--device-id", "br-31", "--json").stdout)
    assert len(listed) == 2 and all(c["status"] == "good" for c in listed)


def test_serverkeygen(served):
    env, server, tmp, _ = served
    secret = env.run("token", "create", "--policy", "env-sensor", "--device-id", "env-0a0b").stdout.decode().strip()
    keyout, certout = tmp / "env.key", tmp / "env.pem"
    out = estclient("serverkeygen", *_base(server, "env-sensor"), "-config", _config(tmp, "env-0a0b", secret),
                    "-cn", "env-0a0b", "-ou", "env-sensor", "-org", "BuildingCo", "-keyout", keyout, "-out", certout)
    assert out.returncode == 0, out.stderr
    key = serialization.load_pem_private_key(keyout.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(certout.read_bytes())
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == "CN=env-0a0b,OU=env-sensor,O=BuildingCo"


def test_idevid_enroll(served):
    env, server, tmp, acme = served
    idevid, idkey = acme.idevid("fl-9")
    csr = tmp / "fl-9.csr"
    new_key = _key(tmp, "fl-9-new")
    assert openssl("req", "-new", "-key", str(new_key), "-subj", "/O=BuildingCo/OU=factory-lock/CN=fl-9",
                   "-out", str(csr)).returncode == 0
    out = estclient("enroll", *_base(server, "factory-lock"), "-certs", idevid, "-key", idkey, "-csr", csr)
    assert out.returncode == 0, out.stderr
    cert = x509.load_pem_x509_certificate(out.stdout.encode())
    assert cert.subject.rfc4514_string() == "CN=fl-9,OU=factory-lock,O=BuildingCo"
    assert cert.public_key() == serialization.load_pem_private_key(new_key.read_bytes(), None).public_key()
