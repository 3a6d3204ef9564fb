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
from integration.keycloak_harness import jwt_claims, keycloak_for, new_keycloak, processes_using, wait_for
from integration.server_harness import policy_dir_with

pytestmark = [pytest.mark.keycloak, pytest.mark.integration, pytest.mark.slow, pytest.mark.database]

REALM = "smart-building"
TEST_POLICIES = {
    # O= with characters that RFC 2253 escapes: comma, plus, quotes.
    "lab-gear": '''
subject = 'CN={device_id},OU=lab,O=Smith\\, Jones \\+ Co \\"West\\"'
device_id_pattern = "gear-[0-9]{1,4}"
enrollment = ["admin"]
[keycloak]
realm = "smart-building"
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
realm = "smart-building"
default_client_scopes = ["door-access"]
access_token_lifespan = "5m"
''',
    # A second realm, set up by init-realm; tokens for an introspecting broker, client sessions.
    "gate-sensor": '''
subject = "CN={device_id},OU=gate-sensor,O=BuildingCo"
device_id_pattern = "gate-[0-9]{1,4}"
enrollment = ["admin"]
[keycloak]
realm = "campus"
default_client_scopes = ["device-telemetry"]
audience = ["mqtt-broker", "building-api"]
client_session_idle = "30m"
client_session_max = "11h"
''',
    # private_key_jwt: the device signs its own client assertion (RFC 7523), no TLS client certificate.
    "jwt-sensor": '''
subject = "CN={device_id},OU=jwt-sensor,O=BuildingCo"
device_id_pattern = "jwt-[0-9]{1,4}"
enrollment = ["admin"]
[keycloak]
realm = "campus"
default_client_scopes = ["device-telemetry"]
client_authenticator = "client-jwt"
''',
    # Devices as users: Keycloak's own X.509 login, which asks device-ca's OCSP responder.
    "campus-user": '''
subject = "CN={device_id},OU=campus-user,O=BuildingCo"
device_id_pattern = "user-[0-9]{1,4}"
enrollment = ["admin"]
[keycloak]
realm = "campus"
ocsp_checked_user_flow = true
''',
    # Certificates that expire during the test run (the server's clock is the system's).
    "brief-lock": '''
subject = "CN={device_id},OU=brief-lock,O=BuildingCo"
device_id_pattern = "brief-[0-9]{1,4}"
validity = "75s"
renewal_window = "74s"
enrollment = ["admin"]
[keycloak]
realm = "smart-building"
default_client_scopes = ["door-access"]
''',
}
CAMPUS = "campus"


@pytest.fixture(scope="module")
def ca(tmp_path_factory, module_database_url):
    tmp = tmp_path_factory.mktemp("kc-ca")
    env = new_ca_env(tmp, module_database_url)
    env.extra["DEVICE_CA_POLICY_DIR"] = str(policy_dir_with(tmp, TEST_POLICIES))
    env.run("init", "--organization", "Keycloak Test")
    return env


@pytest.fixture(scope="module")
def keycloak(ca, tmp_path_factory):
    with keycloak_for(ca, tmp_path_factory.mktemp("kc-state")) as kc:
        yield kc


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
    serial = format(x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number, "036x")   # as device-ca writes serials
    return cert_path, key_path, serial


def settled(store, device_id: str, timeout: float = 60) -> list:
    """Wait until the drainer has applied every outbox row of the device; returns them."""
    def rows():
        return [e for e in store.queue.entries("keycloak.") if e.device_id == device_id]

    def done():
        found = rows()
        return found if found and all(e.state == "done" for e in found) else None
    try:
        return wait_for(done, timeout, what=f"the Keycloak outbox of {device_id}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {[(e.topic, e.state, e.attempts, e.last_error) for e in rows()]}") from None


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
    assert "door-access" in keycloak.admin().default_client_scopes(REALM, c["id"])

    status, answer = keycloak.token(REALM, "lock-101", cert, key)
    assert status == 200, answer
    claims = jwt_claims(answer["access_token"])
    assert claims["azp"] == "lock-101"
    assert (claims["device_id"], claims["device_class"], claims["cert_serial"]) == ("lock-101", "door-lock", serial)
    assert claims["exp"] - claims["iat"] == 300
    assert claims["cnf"]["x5t#S256"] == x5t_s256(cert)          # RFC 8705 certificate-bound
    assert "door-access" in answer["scope"].split()

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


def test_the_server_disables_the_client_within_a_minute_of_expiry_without_sync(ca, keycloak, server, store):
    cert, key, serial = issue(ca, "brief-lock", "brief-1")
    settled(store, "brief-1")
    assert client(keycloak, "brief-1")["enabled"] is True
    assert keycloak.token(REALM, "brief-1", cert, key)[0] == 200
    not_after = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()
    assert json.loads(ca.run("show", serial, "--json").stdout)["expiry"] == "renewal-window"

    wait_for(lambda: not client(keycloak, "brief-1")["enabled"], not_after - time.time() + 60, interval=1,
             what="the expired device's client disabled")
    delay = time.time() - not_after
    assert 0 < delay <= 60
    rows = settled(store, "brief-1", timeout=5)
    assert [(r.topic, r.outcome) for r in rows] == [("keycloak.upsert", "create"), ("keycloak.disable", "disable")]
    assert rows[1].payload == {"serial": serial, "policy": "brief-lock", "realm": REALM, "reason": "expired"}
    with store.db.reading() as c:
        events = c.exec_driver_sql("SELECT action, actor FROM audit_events WHERE serial = '%s' ORDER BY seq"
                                   % serial).all()
    assert [tuple(e) for e in events][-1] == ("certificate.expired", "system:expiry")
    assert json.loads(ca.run("show", serial, "--json").stdout)["expiry"] == "expired"
    print(f"client of brief-1 disabled {delay:.1f} s after notAfter, without keycloak sync")


def test_decommission_disables_the_client(ca, keycloak, server, store):
    cert, key, _ = issue(ca, "door-lock", "lock-300")
    settled(store, "lock-300")
    ca.run("device", "decommission", "lock-300")
    settled(store, "lock-300", timeout=30)
    assert client(keycloak, "lock-300")["enabled"] is False
    assert keycloak.token(REALM, "lock-300", cert, key)[0] != 200


def test_renewal_with_the_same_subject_changes_only_the_serial_claim(ca, keycloak, server, store):
    cert1, key1, _ = issue(ca, "door-lock", "lock-200")
    settled(store, "lock-200")
    before = client(keycloak, "lock-200")
    cert2, key2, serial2 = issue(ca, "door-lock", "lock-200")          # new key, same subject
    rows = settled(store, "lock-200")
    assert [r.outcome for r in rows] == ["create", "update: protocolMappers~cert_serial"]
    after = client(keycloak, "lock-200")
    assert {k: v for k, v in after.items() if k != "protocolMappers"} == \
        {k: v for k, v in before.items() if k != "protocolMappers"}
    status, answer = keycloak.token(REALM, "lock-200", cert2, key2)
    assert status == 200, answer
    assert jwt_claims(answer["access_token"])["cnf"]["x5t#S256"] == x5t_s256(cert2)
    assert jwt_claims(answer["access_token"])["cert_serial"] == serial2


def test_a_new_subject_updates_the_client(ca, keycloak, server, store):
    old_cert, old_key, _ = issue(ca, "door-lock", "lock-400")
    settled(store, "lock-400")
    new_cert, new_key, new_serial = issue(ca, "door-lock-v2", "lock-400")
    rows = settled(store, "lock-400")
    assert rows[-1].outcome.startswith("update: attributes.x509.subjectdn,protocolMappers~device_class")
    claims = {m["config"]["claim.name"]: m["config"]["claim.value"] for m in client(keycloak, "lock-400")["protocolMappers"]
              if m["protocolMapper"] == "oidc-hardcoded-claim-mapper"}
    assert claims["device_class"] == "door-lock-v2" and claims["cert_serial"] == new_serial
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
        shown = json.loads(ca.run("keycloak", "status", "--json").stdout)
        assert "unreachable" in shown["last_error"]
        assert "unreachable" in shown["last_drain_error"] and shown["last_drain_error_at"]
        import re
        assert re.search(r"last drain error: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  .*unreachable",   # retried meanwhile: a newer time
                         ca.run("keycloak", "status").stdout.decode())
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
    admin.remove_default_client_scope(REALM, edited["id"], scopes["door-access"])
    admin.delete_client(REALM, client(keycloak, "lock-601")["id"])
    assert keycloak.token(REALM, "lock-601", gone_cert, gone_key)[0] != 200

    before = clients_snapshot(keycloak)
    dry = ca.run("keycloak", "sync", "--dry-run").stdout.decode()
    assert f"would {REALM}: create lock-601" in dry
    assert "update lock-600" in dry and "x509.subjectdn" in dry and "directAccessGrantsEnabled" in dry
    assert "defaultClientScopes+door-access" in dry
    assert clients_snapshot(keycloak) == before

    report = json.loads(ca.run("keycloak", "sync", "--json").stdout)
    actions = {(c["client_id"], c["action"]) for c in report["changes"]}
    assert {("lock-600", "update"), ("lock-601", "create")} <= actions
    repaired = client(keycloak, "lock-600")
    assert repaired["attributes"]["x509.subjectdn"] == "CN=lock-600,OU=door-lock,O=BuildingCo"
    assert repaired["attributes"]["x509.allow.regex.pattern.comparison"] == "false"
    assert repaired["directAccessGrantsEnabled"] is False
    assert "door-access" in admin.default_client_scopes(REALM, repaired["id"])
    assert keycloak.token(REALM, "lock-600", cert, key)[0] == 200
    assert keycloak.token(REALM, "lock-601", gone_cert, gone_key)[0] == 200

    again = json.loads(ca.run("keycloak", "sync", "--json").stdout)        # idempotent
    assert again["changes"] == [] and again["summary"]["unchanged"] >= 2
    assert json.loads(ca.run("keycloak", "status", "--json").stdout)["pending"] == 0


def test_a_keycloak_not_ready_in_time_is_stopped_and_its_log_shown(tmp_path):
    """Harness (issue 16, item 8): a start that does not become ready in time fails with the log's
    tail and leaves no JVM behind."""
    kc = new_keycloak(tmp_path / "kc-slow")
    with pytest.raises(RuntimeError, match="keycloak.log") as failed:
        kc.start(fresh=True, ready_timeout=2)
    assert "not ready after 2s" in str(failed.value)
    wait_for(lambda: not processes_using(kc.state), 15, what="the JVM to be gone")


# -- issue 16: realms, claims, audiences, private_key_jwt, revocation of issued tokens ---------------


def introspect(keycloak, realm: str, client_id: str, secret: str, token: str) -> dict:
    """RFC 7662 over the HTTPS port the token came from (the issuer must match)."""
    import ssl
    import urllib.parse
    import urllib.request

    body = urllib.parse.urlencode({"token": token, "client_id": client_id, "client_secret": secret}).encode()
    url = f"https://127.0.0.1:{keycloak.https_port}/realms/{realm}/protocol/openid-connect/token/introspect"
    context = ssl.create_default_context(cafile=str(keycloak.server_cert))
    with urllib.request.urlopen(urllib.request.Request(url, body), timeout=30, context=context) as r:
        return json.loads(r.read())


def test_device_tokens_carry_the_device_claims_and_audiences_and_brokers_introspect_them(ca, keycloak, server, store):
    """Item 1: device_id, device_class and cert_serial in the token, one audience per resource
    server of the policy, so the broker's introspection answers active; a resource server outside
    the audience is told active: false. Item 4: the client session settings. Item 5: revocation
    makes introspection answer active: false at once."""
    cert, key, serial = issue(ca, "gate-sensor", "gate-1")
    settled(store, "gate-1")
    c = keycloak.admin().find_client(CAMPUS, "gate-1")
    assert c["attributes"]["client.session.idle.timeout"] == "1800"
    assert c["attributes"]["client.session.max.lifespan"] == str(11 * 3600)
    realm = keycloak.admin().get_realm(CAMPUS)          # init-realm raised the realm's limit (default 10 h)
    assert realm["ssoSessionMaxLifespan"] >= 11 * 3600
    status, answer = keycloak.token(CAMPUS, "gate-1", cert, key)
    assert status == 200, answer
    token = answer["access_token"]
    claims = jwt_claims(token)
    assert (claims["device_id"], claims["device_class"], claims["cert_serial"]) == ("gate-1", "gate-sensor", serial)
    audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert {"mqtt-broker", "building-api"} <= set(audience)
    assert "device-telemetry" in answer["scope"].split()

    broker = keycloak.admin().resource_server(CAMPUS, "mqtt-broker")
    outsider = keycloak.admin().resource_server(CAMPUS, "lab-api")
    seen = introspect(keycloak, CAMPUS, "mqtt-broker", broker, token)
    assert seen["active"] is True and seen["device_id"] == "gate-1" and seen["cert_serial"] == serial
    assert introspect(keycloak, CAMPUS, "lab-api", outsider, token)["active"] is False

    ca.run("revoke", serial, "--reason", "keyCompromise")
    settled(store, "gate-1", timeout=30)
    disabled = keycloak.admin().find_client(CAMPUS, "gate-1")
    assert disabled["enabled"] is False and disabled["notBefore"] >= claims["iat"]
    assert introspect(keycloak, CAMPUS, "mqtt-broker", broker, token)["active"] is False
    assert keycloak.token(CAMPUS, "gate-1", cert, key)[0] != 200


def client_assertion(client_id: str, key_path, audience: str) -> str:
    """An RFC 7523 client assertion (ES256) signed with the device's key."""
    import uuid

    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    now = int(time.time())
    signing_input = b64(json.dumps({"alg": "ES256", "typ": "JWT"}).encode()) + "." + b64(json.dumps(
        {"iss": client_id, "sub": client_id, "aud": audience, "jti": str(uuid.uuid4()), "iat": now,
         "exp": now + 60}).encode())
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def jwt_token(keycloak, realm: str, client_id: str, key_path) -> tuple[int, dict]:
    """client_credentials with private_key_jwt over plain HTTP: no TLS client certificate at all."""
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{keycloak.url}/realms/{realm}/protocol/openid-connect/token"
    body = urllib.parse.urlencode({
        "grant_type": "client_credentials", "client_id": client_id,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion(client_id, key_path, url)}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body), timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_private_key_jwt_follows_the_device_key_through_rekey_and_revocation(ca, keycloak, server, store):
    """Item 2: a client-jwt device signs its own assertion; after a rekey only the new key works,
    after revocation none; another device's key never does."""
    cert, key, _ = issue(ca, "jwt-sensor", "jwt-1")
    settled(store, "jwt-1")
    c = keycloak.admin().find_client(CAMPUS, "jwt-1")
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert c["clientAuthenticatorType"] == "client-jwt"
    assert c["attributes"]["jwt.credential.certificate"] == base64.b64encode(der).decode()
    status, answer = jwt_token(keycloak, CAMPUS, "jwt-1", key)
    assert status == 200, answer
    assert jwt_claims(answer["access_token"])["device_id"] == "jwt-1"

    _, other_key, _ = issue(ca, "jwt-sensor", "jwt-2")
    settled(store, "jwt-2")
    assert jwt_token(keycloak, CAMPUS, "jwt-1", other_key)[0] in (400, 401)       # another device's key

    new_cert, new_key, new_serial = issue(ca, "jwt-sensor", "jwt-1")              # rekey
    settled(store, "jwt-1")
    assert jwt_token(keycloak, CAMPUS, "jwt-1", key)[0] in (400, 401)
    status, answer = jwt_token(keycloak, CAMPUS, "jwt-1", new_key)
    assert status == 200, answer
    assert jwt_claims(answer["access_token"])["cert_serial"] == new_serial

    ca.run("revoke", new_serial, "--reason", "keyCompromise")
    settled(store, "jwt-1", timeout=30)
    assert jwt_token(keycloak, CAMPUS, "jwt-1", new_key)[0] in (400, 401)


def test_init_realm_sets_up_the_policies_realms_and_sync_says_how_to_create_a_missing_one(ca, keycloak, server, store):
    """Item 1: init-realm (run by the fixture) made the realms as the policies want them; it is
    idempotent, repairs hand edits, --dry-run changes nothing; a sync against a missing realm
    fails with one line naming the command, `keycloak status` shows that failure with its time,
    and `sync --create-realms` creates it."""
    admin = keycloak.admin()

    def realm() -> dict:
        return admin.request("GET", f"/admin/realms/{CAMPUS}")[1]

    got = realm()
    assert got["enabled"] and got["bruteForceProtected"] and got["eventsEnabled"] and got["adminEventsEnabled"]
    assert got["eventsExpiration"] == 30 * 86400 and got["attributes"]["adminEventsExpiration"] == str(30 * 86400)
    assert "device-telemetry" in admin.client_scopes(CAMPUS) and "door-access" in admin.client_scopes(REALM)
    again = ca.run("keycloak", "init-realm").stdout.decode()
    assert f"{CAMPUS}: realm unchanged" in again and f"{REALM}: realm unchanged" in again

    admin.request("PUT", f"/admin/realms/{CAMPUS}", {"realm": CAMPUS, "bruteForceProtected": False,
                                                    "displayName": "Campus"}, expect=(204,))
    before = realm()
    dry = ca.run("keycloak", "init-realm", "--dry-run").stdout.decode()
    assert f"would {CAMPUS}: update realm: bruteForceProtected" in dry
    assert realm()["bruteForceProtected"] is False
    ca.run("keycloak", "init-realm", "--event-retention", "7d")
    after = realm()
    assert after["bruteForceProtected"] is True and after["eventsExpiration"] == 7 * 86400
    assert after["displayName"] == "Campus" and set(before["attributes"]) <= set(after["attributes"])    # the rest kept
    bad = ca.run("keycloak", "init-realm", "--event-retention", "soon", check=False)
    assert bad.returncode != 0 and b"--event-retention" in bad.stderr

    issue(ca, "gate-sensor", "gate-9")
    settled(store, "gate-9")
    admin.delete_realm(CAMPUS)
    failed = ca.run("keycloak", "sync", check=False)
    message = failed.stderr.decode().strip()
    assert failed.returncode != 0 and len(message.splitlines()) == 1, message
    assert "realm campus does not exist" in message and "device-ca keycloak init-realm" in message
    shown = json.loads(ca.run("keycloak", "status", "--json").stdout)
    assert "realm campus does not exist" in shown["last_sync_error"] and shown["last_sync_at"]
    assert "failed: realm campus does not exist" in ca.run("keycloak", "status").stdout.decode()

    out = ca.run("keycloak", "sync", "--create-realms").stdout.decode()
    assert f"{CAMPUS}: create realm" in out
    assert realm()["bruteForceProtected"] is True
    assert admin.find_client(CAMPUS, "gate-9")["enabled"] is True
    shown = json.loads(ca.run("keycloak", "status", "--json").stdout)
    assert shown["last_sync_error"] is None


def test_a_badge_reader_gets_a_token_for_the_person_who_approves_it_until_it_is_revoked(ca, keycloak, server, store):
    """Item 3 (RFC 8628): the badge reader, authenticated by its certificate, starts the device
    flow; a person logs in on the verification page and approves; the reader's poll then gets a
    token for that person. After the reader's certificate is revoked the flow is refused."""
    cert, key, serial = issue(ca, "badge-reader", "badge-reader-entrance")
    settled(store, "badge-reader-entrance")
    c = keycloak.admin().find_client(REALM, "badge-reader-entrance")
    assert c["attributes"]["oauth2.device.authorization.grant.enabled"] == "true"
    keycloak.add_user(REALM, "alice", "correct horse battery staple")
    device_path = f"/realms/{REALM}/protocol/openid-connect/auth/device"
    token_path = f"/realms/{REALM}/protocol/openid-connect/token"

    status, started = keycloak.post_mtls(device_path, cert, key, client_id="badge-reader-entrance")
    assert status == 200 and started["user_code"] and started["device_code"], started
    grant = "urn:ietf:params:oauth:grant-type:device_code"
    status, pending = keycloak.post_mtls(token_path, cert, key, grant_type=grant, client_id="badge-reader-entrance",
                                         device_code=started["device_code"])
    assert status == 400 and pending["error"] == "authorization_pending", pending

    keycloak.approve_device(started["verification_uri_complete"], "alice", "correct horse battery staple")
    interval, deadline = int(started.get("interval", 5)), time.monotonic() + 60
    while True:                                                   # poll as RFC 8628 §3.5 says
        time.sleep(interval)
        status, answer = keycloak.post_mtls(token_path, cert, key, grant_type=grant,
                                            client_id="badge-reader-entrance", device_code=started["device_code"])
        if answer.get("error") == "slow_down":
            interval += 5
        if status == 200 or answer.get("error") not in ("slow_down", "authorization_pending") \
                or time.monotonic() > deadline:
            break
    assert status == 200, answer
    claims = jwt_claims(answer["access_token"])
    assert claims.get("preferred_username") == "alice" and claims["azp"] == "badge-reader-entrance", claims
    assert claims["device_id"] == "badge-reader-entrance" and claims["cnf"]["x5t#S256"] == x5t_s256(cert)

    ca.run("revoke", serial, "--reason", "keyCompromise")
    settled(store, "badge-reader-entrance", timeout=30)
    status, refused = keycloak.post_mtls(device_path, cert, key, client_id="badge-reader-entrance")
    assert status in (400, 401) and "device_code" not in refused, refused


def test_a_change_for_a_realm_no_policy_maps_any_more_is_settled_not_retried_forever(ca, keycloak, server, store):
    """A policy renamed its realm (the shipped ones moved from `building` to `smart-building`):
    outbox rows written before still name the old realm, which Keycloak does not have. There is
    no client to disable there, so the drainer and the sync settle them as absent instead of
    failing on them forever."""
    import datetime as dt

    import sqlalchemy as sa

    from device_ca.store.tables import OutboxRow

    with store.db.engine.begin() as c:
        c.execute(sa.insert(OutboxRow.__table__).values(
            created_at=dt.datetime.now(dt.timezone.utc), topic="keycloak.disable", device_id="lock-999",
            payload=json.dumps({"realm": "building-before-the-rename", "serial": "01"}), state="pending", attempts=0))
    rows = settled(store, "lock-999", timeout=30)
    assert [(r.outcome, r.attempts) for r in rows] == [("absent", 0)]
    report = json.loads(ca.run("keycloak", "sync", "--json").stdout)
    assert report["summary"]["failed"] == 0


def test_keycloak_itself_refuses_a_revoked_device_by_ocsp(ca, keycloak, server, store):
    """Item 9: init-realm sets up Keycloak's X.509 login for devices represented as users, asking
    device-ca's OCSP responder (fail closed). Good: Keycloak logs the device in. Revoked: Keycloak
    refuses it by OCSP alone, its user still enabled."""
    out = ca.run("keycloak", "init-realm", "--ocsp-url", f"{server.http}/ocsp").stdout.decode()
    assert f"{CAMPUS}: update realm: ocsp login config" in out, out
    assert f"{CAMPUS}: realm unchanged" in ca.run("keycloak", "init-realm", "--ocsp-url",
                                                   f"{server.http}/ocsp").stdout.decode()
    cert, key, serial = issue(ca, "campus-user", "user-7")
    chain = cert.with_suffix(".chain.pem")
    chain.write_bytes(cert.read_bytes() + (ca.ca_dir / "issuing.pem").read_bytes())
    user_id = keycloak.add_user(CAMPUS, "user-7", "not-used-by-the-x509-login")
    login = {"grant_type": "password", "client_id": "device-ca-x509-login", "username": "user-7"}
    path = f"/realms/{CAMPUS}/protocol/openid-connect/token"
    status, answer = keycloak.post_mtls(path, chain, key, **login)
    assert status == 200, answer
    assert jwt_claims(answer["access_token"])["sub"] == user_id

    ca.run("revoke", serial, "--reason", "keyCompromise")
    status, answer = keycloak.post_mtls(path, chain, key, **login)
    assert status in (400, 401) and "access_token" not in answer, answer
    _, user, _ = keycloak.admin().request("GET", f"/admin/realms/{CAMPUS}/users/{user_id}")
    assert user["enabled"] is True                                  # refused by OCSP, not by device-ca's sync


# -- issue 18 item 2: issuing-CA rollover --------------------------------------------------------


def test_operators_see_keycloak_status_and_the_dry_run_diff_over_the_api(ca, keycloak, server, store):
    """The operators' API answers what `keycloak status --json` and `keycloak sync --dry-run --json
    --all` print (the same ra/reports functions), against this real Keycloak; the diff changes
    nothing."""
    _, _, serial = issue(ca, "door-lock", "lock-720")
    settled(store, "lock-720")
    directory = ca.home / "operators"
    directory.mkdir(exist_ok=True)
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(directory / "kc-viewer.key"), "-subj", "/O=BuildingCo/OU=admin/CN=kc-viewer",
                    "-out", str(directory / "kc-viewer.csr")], check=True, capture_output=True)
    ca.run("issue", "--policy", "admin", "--csr", str(directory / "kc-viewer.csr"), "--role", "viewer",
           "--out", str(directory / "kc-viewer.pem"))

    def api(path: str) -> tuple[int, dict]:
        proc = subprocess.run(["curl", "-s", "-w", "\\n%{http_code}", "--cacert", str(server.chain), "--cert",
                               str(directory / "kc-viewer.pem"), "--key", str(directory / "kc-viewer.key"),
                               f"https://127.0.0.1:{server.port}/api/v1{path}"], capture_output=True, timeout=120)
        body, _, status = proc.stdout.rpartition(b"\n")
        return int(status), json.loads(body)

    status, diff = api("/keycloak/diff?all=true")
    assert status == 200, diff
    assert diff == json.loads(ca.run("keycloak", "sync", "--dry-run", "--json", "--all").stdout)
    assert diff["dry_run"] is True and diff["summary"]["failed"] == 0
    assert [c["action"] for c in diff["changes"] if c["serial"] == serial] == ["unchanged"]
    status, shown = api("/keycloak/status")
    assert status == 200 and shown["configured"] is True and shown["pending"] == 0
    assert shown == json.loads(ca.run("keycloak", "status", "--json").stdout)


def test_after_an_issuing_ca_rollover_devices_of_both_generations_get_tokens(ca, keycloak, server, store):
    """A device of the first issuing CA gets a token; `ca rollover` while serve runs (its Keycloak
    outbox drainer goes on); a device issued by generation 2 gets one too, the first still does, and every client's
    x509.casubjectdn is still the root, so `keycloak sync` has nothing to change. What does change
    is Keycloak's TLS trust store: restarted with ca/trust.pem (every trusted generation and the
    root), as docs/rollover.md says. Rolls the module's CA over: the module's last test."""
    old_cert, old_key, _ = issue(ca, "door-lock", "lock-700")
    settled(store, "lock-700")
    status, answer = keycloak.token(REALM, "lock-700", old_cert, old_key)
    assert status == 200, answer

    rolled = ca.run("ca", "rollover")                  # the server runs on: it follows the rollover
    assert rolled.stdout.startswith(b"new issuing CA issuing-2:"), rolled.stdout
    new_cert, new_key, new_serial = issue(ca, "door-lock", "lock-701")
    second = x509.load_pem_x509_certificate((ca.ca_dir / "issuing-2.pem").read_bytes())
    first = x509.load_pem_x509_certificate((ca.ca_dir / "issuing.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate(new_cert.read_bytes())
    assert leaf.issuer == second.subject != first.subject
    leaf.verify_directly_issued_by(second)
    settled(store, "lock-701")

    report = json.loads(ca.run("keycloak", "sync", "--json").stdout)
    assert report["summary"]["failed"] == 0 and report["changes"] == [], report
    root = rfc2253_by_openssl(ca.ca_dir / "root.pem")
    for device_id, cert in (("lock-700", old_cert), ("lock-701", new_cert)):
        attributes = client(keycloak, device_id)["attributes"]
        assert attributes["x509.casubjectdn"] == root, (device_id, attributes)
        assert attributes["x509.subjectdn"] == rfc2253_by_openssl(cert)

    # Keycloak's HTTPS listener read its trust store at start: a device that presents its
    # certificate alone is refused in the handshake until Keycloak restarts with the new trust.pem.
    assert keycloak.token(REALM, "lock-701", new_cert, new_key)[0] != 200
    trust = [c.subject for c in x509.load_pem_x509_certificates((ca.ca_dir / "trust.pem").read_bytes())]
    assert trust == [second.subject, first.subject, x509.load_pem_x509_certificate(
        (ca.ca_dir / "root.pem").read_bytes()).subject]
    keycloak.start(truststore=ca.ca_dir / "trust.pem")          # keycloak.sh restarts on a changed trust store

    status, answer = keycloak.token(REALM, "lock-701", new_cert, new_key)
    assert status == 200, answer
    assert jwt_claims(answer["access_token"])["cert_serial"] == new_serial
    status, answer = keycloak.token(REALM, "lock-700", old_cert, old_key)
    assert status == 200, answer
