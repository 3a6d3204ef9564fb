"""Keycloak in step with the fleet, against a real Keycloak 26.7.3 (scripts/keycloak.sh).

A device gets an access token from Keycloak with nothing but its certificate: client-credentials
grant over mutual TLS to Keycloak's HTTPS port, which trusts the device CA. device-ca serve runs
the outbox drainer; the CLI issues, revokes and syncs.
"""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from integration.cli_harness import new_ca_env
from integration.keycloak_harness import jwt_claims, new_keycloak, wait_for
from integration.server_harness import policy_dir_with

pytestmark = [pytest.mark.keycloak, pytest.mark.integration, pytest.mark.slow, pytest.mark.database]

REALM = "building"
TEST_POLICIES = {
    # O= with characters that RFC 2253 escapes: comma, plus, quotes.
    "lab-gear": '''
subject = 'CN={device_id},OU=lab,O=Smith\\, Jones \\+ Co \\"West\\"'
device_id_pattern = "gear-[0-9]{1,4}"
enrollment = ["admin"]
[keycloak]
realm = "building"
default_client_scopes = ["lab"]
access_token_lifespan = "2m"
certificate_bound_tokens = false
''',
    # The same devices as door-lock under another subject: moving a device here changes its DN.
    "door-lock-v2": '''
subject = "CN={device_id},OU=door-lock-v2,O=BuildingCo"
device_id_pattern = "lock-[0-9]{1,8}"
enrollment = ["admin"]
[keycloak]
realm = "building"
default_client_scopes = ["door-lock"]
access_token_lifespan = "5m"
''',
}


@pytest.fixture(scope="module")
def ca(tmp_path_factory, module_database_url):
    tmp = tmp_path_factory.mktemp("kc-ca")
    env = new_ca_env(tmp, module_database_url)
    env.extra["DEVICE_CA_POLICY_DIR"] = str(policy_dir_with(tmp, TEST_POLICIES))
    env.run("init", "--organization", "Keycloak Test")
    return env


@pytest.fixture(scope="module")
def keycloak(ca, tmp_path_factory):
    kc = new_keycloak(tmp_path_factory.mktemp("kc-state"))
    kc.start(truststore=ca.ca_dir / "chain.pem", fresh=True)
    try:
        kc.admin().create_realm(REALM)
        ca.extra.update(kc.device_env(ca.home))
        yield kc
    finally:
        kc.stop()


@pytest.fixture(scope="module")
def server(ca, keycloak, module_serve):
    return module_serve(ca, "--workers", "2", "--threads", "1", "--http-workers", "1")


@pytest.fixture(scope="module")
def store(ca):
    from device_ca.store import Store

    s = Store(ca.database_url)
    yield s
    s.db.dispose()


# -- helpers -------------------------------------------------------------------------------------

def issue(ca, policy: str, device_id: str) -> tuple:
    """Key and CSR (empty subject: the policy's template applies), issued with the CLI; (cert, key, serial)."""
    directory = ca.home / "devices"
    directory.mkdir(exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    n = len(list(directory.glob(f"{device_id}-*.key")))
    key_path, csr_path, cert_path = (directory / f"{device_id}-{n}.{ext}" for ext in ("key", "csr", "pem"))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    ca.run("issue", "--policy", policy, "--csr", str(csr_path), "--device-id", device_id, "--out", str(cert_path))
    serial = format(x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number, "x")
    return cert_path, key_path, serial


def settled(store, device_id: str, timeout: float = 60) -> list:
    """Wait until the drainer has applied every outbox row of the device; returns them."""
    def done():
        rows = [e for e in store.queue.entries("keycloak.") if e.device_id == device_id]
        return rows if rows and all(e.state == "done" for e in rows) else None
    return wait_for(done, timeout, what=f"the Keycloak outbox of {device_id}")


def client(keycloak, device_id: str) -> dict | None:
    return keycloak.admin().find_client(REALM, device_id)


def clients_snapshot(keycloak) -> str:
    admin = keycloak.admin()
    snapshot = []
    for c in sorted(admin.clients(REALM), key=lambda c: c["clientId"]):
        snapshot.append({**c, "defaultClientScopes": sorted(admin.default_client_scopes(REALM, c["id"]))})
    return json.dumps(snapshot, sort_keys=True)


def rfc2253_by_openssl(cert_path) -> str:
    proc = subprocess.run(["openssl", "x509", "-in", str(cert_path), "-noout", "-subject", "-nameopt", "RFC2253"],
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip().removeprefix("subject=")


def x5t_s256(cert_path) -> str:
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


# -- tests ---------------------------------------------------------------------------------------

def test_issuing_creates_the_client_and_the_device_gets_a_token_with_its_certificate(ca, keycloak, server, store):
    cert, key, serial = issue(ca, "door-lock", "lock-101")
    rows = settled(store, "lock-101")
    assert [(r.topic, r.outcome) for r in rows] == [("keycloak.upsert", "create")]

    c = client(keycloak, "lock-101")
    root = x509.load_pem_x509_certificate((ca.ca_dir / "root.pem").read_bytes())
    assert c["enabled"] is True and c["clientAuthenticatorType"] == "client-x509"
    assert c["serviceAccountsEnabled"] is True and c["publicClient"] is False
    assert not (c["standardFlowEnabled"] or c["implicitFlowEnabled"] or c["directAccessGrantsEnabled"])
    attributes = c["attributes"]
    assert attributes["x509.subjectdn"] == rfc2253_by_openssl(cert) == "CN=lock-101,OU=door-lock,O=BuildingCo"
    assert attributes["x509.allow.regex.pattern.comparison"] == "false"
    assert attributes["x509.casubjectdn"] == root.subject.rfc4514_string()
    assert attributes["access.token.lifespan"] == "300"
    assert attributes["tls.client.certificate.bound.access.tokens"] == "true"
    assert "door-lock" in keycloak.admin().default_client_scopes(REALM, c["id"])

    status, answer = keycloak.token(REALM, "lock-101", cert, key)
    assert status == 200, answer
    claims = jwt_claims(answer["access_token"])
    assert claims["azp"] == "lock-101"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["cnf"]["x5t#S256"] == x5t_s256(cert)          # RFC 8705 certificate-bound
    assert "door-lock" in answer["scope"].split()

    # Another device's certificate does not authenticate as lock-101.
    other_cert, other_key, _ = issue(ca, "door-lock", "lock-102")
    settled(store, "lock-102")
    status, answer = keycloak.token(REALM, "lock-101", other_cert, other_key)
    assert status == 401 and "access_token" not in answer


def test_a_sensor_gets_ten_minute_tokens(ca, keycloak, server, store):
    cert, key, _ = issue(ca, "env-sensor", "env-00a1")
    settled(store, "env-00a1")
    status, answer = keycloak.token(REALM, "env-00a1", cert, key)
    assert status == 200, answer
    claims = jwt_claims(answer["access_token"])
    assert claims["exp"] - claims["iat"] == 600


def test_revocation_disables_the_client_and_the_next_token_request_fails(ca, keycloak, server, store):
    cert, key, serial = issue(ca, "badge-reader", "br-7")
    settled(store, "br-7")
    assert keycloak.token(REALM, "br-7", cert, key)[0] == 200

    ca.run("revoke", serial, "--reason", "keyCompromise")
    rows = settled(store, "br-7", timeout=30)
    assert [r.outcome for r in rows] == ["create", "disable"]
    assert client(keycloak, "br-7")["enabled"] is False
    status, answer = keycloak.token(REALM, "br-7", cert, key)
    assert status in (400, 401) and "access_token" not in answer


def test_decommission_disables_the_client(ca, keycloak, server, store):
    cert, key, _ = issue(ca, "door-lock", "lock-300")
    settled(store, "lock-300")
    ca.run("device", "decommission", "lock-300")
    settled(store, "lock-300", timeout=30)
    assert client(keycloak, "lock-300")["enabled"] is False
    assert keycloak.token(REALM, "lock-300", cert, key)[0] != 200


def test_renewal_with_the_same_subject_leaves_the_client_alone(ca, keycloak, server, store):
    cert1, key1, _ = issue(ca, "door-lock", "lock-200")
    settled(store, "lock-200")
    before = client(keycloak, "lock-200")
    cert2, key2, _ = issue(ca, "door-lock", "lock-200")          # new key, same subject
    rows = settled(store, "lock-200")
    assert [r.outcome for r in rows] == ["create", "unchanged"]
    assert client(keycloak, "lock-200") == before
    status, answer = keycloak.token(REALM, "lock-200", cert2, key2)
    assert status == 200, answer
    assert jwt_claims(answer["access_token"])["cnf"]["x5t#S256"] == x5t_s256(cert2)


def test_a_new_subject_updates_the_client(ca, keycloak, server, store):
    old_cert, old_key, _ = issue(ca, "door-lock", "lock-400")
    settled(store, "lock-400")
    new_cert, new_key, _ = issue(ca, "door-lock-v2", "lock-400")
    rows = settled(store, "lock-400")
    assert rows[-1].outcome == "update: attributes.x509.subjectdn"
    assert client(keycloak, "lock-400")["attributes"]["x509.subjectdn"] == "CN=lock-400,OU=door-lock-v2,O=BuildingCo"
    assert keycloak.token(REALM, "lock-400", new_cert, new_key)[0] == 200
    assert keycloak.token(REALM, "lock-400", old_cert, old_key)[0] == 401


def test_a_subject_with_rfc2253_escapes_still_matches(ca, keycloak, server, store):
    cert, key, _ = issue(ca, "lab-gear", "gear-1")
    settled(store, "gear-1")
    c = client(keycloak, "gear-1")
    expected = 'CN=gear-1,OU=lab,O=Smith\\, Jones \\+ Co \\"West\\"'
    assert rfc2253_by_openssl(cert) == expected
    assert c["attributes"]["x509.subjectdn"] == expected
    assert c["attributes"]["tls.client.certificate.bound.access.tokens"] == "false"
    status, answer = keycloak.token(REALM, "gear-1", cert, key)
    assert status == 200, answer
    claims = jwt_claims(answer["access_token"])
    assert claims["exp"] - claims["iat"] == 120 and "cnf" not in claims
    assert "lab" in answer["scope"].split()          # the scope did not exist: device-ca created it


def test_keycloak_down_during_20_revocations_loses_nothing_and_applies_them_in_order(ca, keycloak, server, store):
    devices = [f"lock-5{i:02d}" for i in range(20)]
    issued = {d: issue(ca, "door-lock", d) for d in devices}
    for d in devices:
        settled(store, d)
    keycloak.stop()
    try:
        for d in devices:
            started = time.monotonic()
            ca.run("revoke", issued[d][2], "--reason", "cessationOfOperation")
            assert time.monotonic() - started < 15, "revocation waited for Keycloak"
        # Re-enrolled after its revocation: only applying in order leaves it enabled.
        renewed_cert, renewed_key, _ = issue(ca, "door-lock", devices[0])
        status = json.loads(ca.run("keycloak", "status", "--json").stdout)
        assert status["pending"] == 21
        wait_for(lambda: json.loads(ca.run("keycloak", "status", "--json").stdout)["last_error"], 30,
                 what="the drainer's error while Keycloak is down")
        assert "unreachable" in json.loads(ca.run("keycloak", "status", "--json").stdout)["last_error"]
    finally:
        keycloak.start()
    for d in devices:
        settled(store, d, timeout=120)
    rows = [e for e in store.queue.entries("keycloak.") if e.device_id in devices]
    disables = [e for e in rows if e.topic == "keycloak.disable"]
    assert len(disables) == 20 and all(e.outcome == "disable" for e in disables[1:])
    assert disables[0].attempts >= 1 and disables[0].last_error          # tried while Keycloak was down
    written_while_down = [e for e in rows if e.id >= disables[0].id]
    assert len(written_while_down) == 21
    assert [e.applied_at for e in written_while_down] == sorted(e.applied_at for e in written_while_down)
    for d in devices[1:]:
        assert client(keycloak, d)["enabled"] is False
    assert client(keycloak, devices[0])["enabled"] is True
    assert keycloak.token(REALM, devices[0], renewed_cert, renewed_key)[0] == 200
    assert keycloak.token(REALM, devices[1], issued[devices[1]][0], issued[devices[1]][1])[0] != 200


def test_sync_repairs_hand_edits_and_dry_run_changes_nothing(ca, keycloak, server, store):
    cert, key, _ = issue(ca, "door-lock", "lock-600")
    gone_cert, gone_key, _ = issue(ca, "door-lock", "lock-601")
    settled(store, "lock-600")
    settled(store, "lock-601")
    admin = keycloak.admin()
    edited = client(keycloak, "lock-600")
    edited["attributes"]["x509.subjectdn"] = "CN=.*"
    edited["attributes"]["x509.allow.regex.pattern.comparison"] = "true"
    edited["directAccessGrantsEnabled"] = True
    admin.update_client(REALM, edited["id"], edited)
    scopes = admin.default_client_scopes(REALM, edited["id"])
    admin.remove_default_client_scope(REALM, edited["id"], scopes["door-lock"])
    admin.delete_client(REALM, client(keycloak, "lock-601")["id"])
    assert keycloak.token(REALM, "lock-601", gone_cert, gone_key)[0] != 200

    before = clients_snapshot(keycloak)
    dry = ca.run("keycloak", "sync", "--dry-run").stdout.decode()
    assert f"would {REALM}: create lock-601" in dry
    assert "update lock-600" in dry and "x509.subjectdn" in dry and "directAccessGrantsEnabled" in dry
    assert "defaultClientScopes+door-lock" in dry
    assert clients_snapshot(keycloak) == before

    report = json.loads(ca.run("keycloak", "sync", "--json").stdout)
    actions = {(c["client_id"], c["action"]) for c in report["changes"]}
    assert {("lock-600", "update"), ("lock-601", "create")} <= actions
    repaired = client(keycloak, "lock-600")
    assert repaired["attributes"]["x509.subjectdn"] == "CN=lock-600,OU=door-lock,O=BuildingCo"
    assert repaired["attributes"]["x509.allow.regex.pattern.comparison"] == "false"
    assert repaired["directAccessGrantsEnabled"] is False
    assert "door-lock" in admin.default_client_scopes(REALM, repaired["id"])
    assert keycloak.token(REALM, "lock-600", cert, key)[0] == 200
    assert keycloak.token(REALM, "lock-601", gone_cert, gone_key)[0] == 200

    again = json.loads(ca.run("keycloak", "sync", "--json").stdout)        # idempotent
    assert again["changes"] == [] and again["summary"]["unchanged"] >= 2
    assert json.loads(ca.run("keycloak", "status", "--json").stdout)["pending"] == 0
