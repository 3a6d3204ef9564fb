"""The Keycloak client a certificate calls for, the fleet's desired state, and the settings (no Keycloak)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from device_ca.config import Settings
from device_ca.errors import DeviceCAError
from device_ca.keycloak import credentials_from_env
from device_ca.keycloak.fleet import desired_clients
from device_ca.keycloak.outbox import backoff
from device_ca.keycloak.representation import DesiredClient, rfc2253
from device_ca.keycloak.sync import plan
from device_ca.policy.model import KeycloakMapping
from device_ca.store import CertificateRecord
from helpers import T0

MAPPING = KeycloakMapping(realm="building", default_client_scopes=("door-lock",),
                          access_token_lifespan=dt.timedelta(minutes=5), certificate_bound_tokens=True)


def _cert(subject: x509.Name, days: int = 30) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(T0 - dt.timedelta(days=1))
            .not_valid_after(T0 + dt.timedelta(days=days)).sign(key, hashes.SHA256()))


def _name(*pairs) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


@pytest.mark.parametrize("value", ["Smith, Jones + Co", 'A "quoted" <name>; x\\y', " leading", "#hash", "trailing ",
                                   "Zürich GmbH"])
def test_rfc2253_matches_openssl(tmp_path, value):
    cert = _cert(_name((NameOID.COUNTRY_NAME, "DE"), (NameOID.ORGANIZATION_NAME, value),
                       (NameOID.ORGANIZATIONAL_UNIT_NAME, "door-lock"), (NameOID.COMMON_NAME, "lock-1")))
    path = tmp_path / "c.pem"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    proc = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-subject", "-nameopt",
                           "RFC2253,-esc_msb"], capture_output=True, text=True, check=True)
    assert rfc2253(cert.subject) == proc.stdout.strip().removeprefix("subject=")
    assert rfc2253(cert.subject).startswith("CN=lock-1,OU=door-lock,O=")      # most specific RDN first


def test_rfc2253_writes_types_without_a_keyword_as_oid_and_der_hex():
    name = _name((NameOID.ORGANIZATION_NAME, "BuildingCo"), (NameOID.SERIAL_NUMBER, "SN42"),
                 (NameOID.COMMON_NAME, "lock-1"))
    # 0x13: PrintableString, as cryptography encodes serialNumber
    assert rfc2253(name) == "CN=lock-1,2.5.4.5=#1304534e3432,O=BuildingCo"


def test_the_client_representation_follows_the_policy():
    cert = _cert(_name((NameOID.ORGANIZATION_NAME, "BuildingCo"), (NameOID.COMMON_NAME, "lock-1")))
    root = _cert(_name((NameOID.ORGANIZATION_NAME, "BuildingCo"), (NameOID.COMMON_NAME, "Root CA")))
    body = DesiredClient.for_certificate(MAPPING, "lock-1", cert, root).representation()
    assert body["clientId"] == "lock-1" and body["clientAuthenticatorType"] == "client-x509"
    assert body["serviceAccountsEnabled"] is True and body["publicClient"] is False
    assert not any(body[k] for k in ("standardFlowEnabled", "implicitFlowEnabled", "directAccessGrantsEnabled"))
    assert body["attributes"] == {
        "x509.subjectdn": "CN=lock-1,O=BuildingCo", "x509.allow.regex.pattern.comparison": "false",
        "x509.casubjectdn": "CN=Root CA,O=BuildingCo", "access.token.lifespan": "300",
        "tls.client.certificate.bound.access.tokens": "true", "oauth2.device.authorization.grant.enabled": "false"}
    assert body["defaultClientScopes"] == ["door-lock"]
    assert [m["name"] for m in body["protocolMappers"]] == ["device-ca device_id"]     # no serial, no policy given


def test_the_policy_puts_claims_audiences_sessions_and_the_jwt_credential_into_the_client():
    import base64

    cert = _cert(_name((NameOID.ORGANIZATION_NAME, "BuildingCo"), (NameOID.COMMON_NAME, "lock-1")))
    mapping = dataclasses.replace(MAPPING, audience=("mqtt-broker", "building-api"), client_authenticator="client-jwt",
                                  certificate_bound_tokens=False, device_authorization_grant=True,
                                  client_session_idle=dt.timedelta(minutes=30), client_session_max=dt.timedelta(hours=8))
    want = DesiredClient.for_certificate(mapping, "lock-1", cert, cert, "0a1b", "door-lock")
    body = want.representation()
    assert body["clientAuthenticatorType"] == "client-jwt"
    assert body["attributes"] == {
        "access.token.lifespan": "300", "tls.client.certificate.bound.access.tokens": "false",
        "oauth2.device.authorization.grant.enabled": "true", "use.jwks.url": "false",
        "jwt.credential.certificate": base64.b64encode(cert.public_bytes(Encoding.DER)).decode(),
        "client.session.idle.timeout": "1800", "client.session.max.lifespan": "28800"}
    claims = {m["config"]["claim.name"]: m["config"]["claim.value"] for m in body["protocolMappers"]
              if m["protocolMapper"] == "oidc-hardcoded-claim-mapper"}
    assert claims == {"device_id": "lock-1", "device_class": "door-lock", "cert_serial": "0a1b"}
    assert [m["config"]["included.custom.audience"] for m in body["protocolMappers"]
            if m["protocolMapper"] == "oidc-audience-mapper"] == ["mqtt-broker", "building-api"]
    # a renewal changes the serial: one mapper to update, nothing else; a mapper device-ca no longer wants goes
    actual = {**body, "id": "u1", "defaultClientScopes": ["door-lock"],
              "protocolMappers": [{**m, "id": f"m{i}"} for i, m in enumerate(body["protocolMappers"])]
              + [{"name": "device-ca audience old", "id": "mx", "protocolMapper": "oidc-audience-mapper", "config": {}},
                 {"name": "hand-made", "id": "my", "protocolMapper": "oidc-audience-mapper", "config": {}}]}
    renewed = dataclasses.replace(want, serial="0c2d")
    change = plan(renewed, actual)
    assert change.action == "update"
    assert change.fields == ("protocolMappers~cert_serial", "protocolMappers-audience old")
    add, update, remove = renewed.mapper_changes(actual)
    assert (add, [m["id"] for m in update], [m["id"] for m in remove]) == ([], ["m2"], ["mx"])
    assert "protocolMappers" not in renewed.patched(actual)          # mappers have their own endpoints


def test_policy_keycloak_settings_are_checked(tmp_path):
    from device_ca.policy.model import PolicyError, load_policy

    def load(text):
        path = tmp_path / "p.toml"
        path.write_text('subject = "CN={device_id}"\n[keycloak]\nrealm = "r"\n' + text)
        return load_policy(path).keycloak

    jwt = load('client_authenticator = "client-jwt"\naudience = ["mqtt-broker"]\nclient_session_idle = "30m"\n')
    assert (jwt.client_authenticator, jwt.certificate_bound_tokens, jwt.audience, jwt.client_session_idle) == \
        ("client-jwt", False, ("mqtt-broker",), dt.timedelta(minutes=30))
    assert load("").certificate_bound_tokens is True and load("").client_authenticator == "client-x509"
    for bad, reason in (('client_authenticator = "client-secret"', "client_authenticator must be one of"),
                        ('audience = "mqtt"', "must be a list"), ('client_session_max = "90d"', "exceeds the ceiling"),
                        ("device_authorization_grant = 1", "must be true or false")):
        with pytest.raises(PolicyError, match=reason):
            load(bad + "\n")


def test_plan_names_what_differs_and_nothing_when_equal():
    cert = _cert(_name((NameOID.COMMON_NAME, "lock-1")))
    want = DesiredClient.for_certificate(MAPPING, "lock-1", cert, cert)
    actual = {**want.representation(), "id": "u1", "defaultClientScopes": ["service_account", "door-lock"]}
    actual["protocolMappers"] = [{**m, "id": "m1"} for m in actual["protocolMappers"]]
    assert plan(want, actual).action == "unchanged"
    assert plan(want, None).action == "create"
    edited = {**actual, "directAccessGrantsEnabled": True, "defaultClientScopes": ["service_account", "email"],
              "attributes": {**actual["attributes"], "x509.allow.regex.pattern.comparison": "true"}}
    change = plan(want, edited)
    assert change.action == "update"
    assert change.fields == ("directAccessGrantsEnabled", "attributes.x509.allow.regex.pattern.comparison",
                             "defaultClientScopes+door-lock", "defaultClientScopes-email")
    patched = want.patched(edited)
    assert patched["directAccessGrantsEnabled"] is False and patched["id"] == "u1"
    assert patched["attributes"]["x509.allow.regex.pattern.comparison"] == "false"
    off = DesiredClient.disabled("building", "lock-1")
    assert plan(off, actual).action == "disable" and plan(off, {**actual, "enabled": False}).action == "unchanged"
    assert plan(off, None).action == "absent"


def _record(serial: str, cert: x509.Certificate, issued: dt.datetime, status: str = "good", policy="door-lock",
            revoked: dt.datetime | None = None, reason: str | None = None) -> CertificateRecord:
    return CertificateRecord(serial=serial, issuer="issuing", device_id="lock-1", policy=policy, subject="",
                             status=status, not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                             fingerprint=serial, der=cert.public_bytes(Encoding.DER), issued_at=issued,
                             revoked_at=revoked, revocation_reason=reason)


def _desired(records, retired=frozenset(), mapping_of=lambda p: MAPPING if p == "door-lock" else None, extra=None):
    anchor = _cert(_name((NameOID.COMMON_NAME, "Root")))
    return desired_clients(records, mapping_of, anchor, T0, retired, extra)


def test_fleet_state_newest_good_certificate_wins_and_revocation_disables():
    a = _cert(_name((NameOID.ORGANIZATIONAL_UNIT_NAME, "v1"), (NameOID.COMMON_NAME, "lock-1")))
    b = _cert(_name((NameOID.ORGANIZATIONAL_UNIT_NAME, "v2"), (NameOID.COMMON_NAME, "lock-1")))
    day = dt.timedelta(days=1)
    first, second = T0 - 3 * day, T0 - 2 * day
    want = _desired([_record("01", a, first), _record("02", b, second)])[("building", "lock-1")]
    assert want.enabled and want.subject_dn == "CN=lock-1,OU=v2" and want.serial == "02"
    # superseded: replaced by a newer certificate, the client stays
    superseded = _record("01", a, first, "revoked", revoked=T0 - day, reason="superseded")
    assert _desired([superseded, _record("02", b, second)])[("building", "lock-1")].enabled
    # any other revocation after the current certificate was issued disables the device
    compromised = _record("01", a, first, "revoked", revoked=T0 - day, reason="keyCompromise")
    assert not _desired([compromised, _record("02", b, second)])[("building", "lock-1")].enabled
    # ... but a certificate issued after that revocation enables it again
    assert _desired([_record("01", a, first, "revoked", revoked=first + dt.timedelta(hours=1), reason="keyCompromise"),
                     _record("02", b, second)])[("building", "lock-1")].enabled
    assert not _desired([_record("02", b, second)], retired=frozenset({"lock-1"}))[("building", "lock-1")].enabled
    expired = _cert(_name((NameOID.COMMON_NAME, "lock-1")), days=-0)
    assert not _desired([_record("03", expired, first)])[("building", "lock-1")].enabled


def test_fleet_state_disables_in_a_realm_the_policy_no_longer_maps_to():
    a = _cert(_name((NameOID.COMMON_NAME, "lock-1")))
    result = _desired([_record("01", a, T0)], mapping_of=lambda p: None, extra={"lock-1": {"old-realm"}})
    assert list(result) == [("old-realm", "lock-1")] and not result[("old-realm", "lock-1")].enabled


def test_backoff_doubles_up_to_the_cap():
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 6, 20)] == [1, 2, 4, 30, 30]


def test_keycloak_settings_and_secrets_from_environment_or_file(tmp_path):
    home = {"DEVICE_CA_HOME": str(tmp_path)}
    assert Settings.load(home).keycloak is None
    (tmp_path / "device-ca.toml").write_text('keycloak_url = "http://127.0.0.1:18080/"\nkeycloak_username = "ca"\n')
    kc = Settings.load(home).keycloak
    assert kc.url == "http://127.0.0.1:18080" and kc.username == "ca" and kc.admin_realm == "master"
    with pytest.raises(DeviceCAError, match="DEVICE_CA_KEYCLOAK_PASSWORD"):
        credentials_from_env(kc, {})
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    credentials = credentials_from_env(kc, {"DEVICE_CA_KEYCLOAK_PASSWORD_FILE": str(secret)})
    assert credentials.password == "s3cret" and "s3cret" not in repr(credentials)
    service = dataclasses.replace(kc, username=None, client_id="device-ca")
    assert credentials_from_env(service, {"DEVICE_CA_KEYCLOAK_CLIENT_SECRET": "x"}).form() == {
        "grant_type": "client_credentials", "client_id": "device-ca", "client_secret": "x"}
    (tmp_path / "device-ca.toml").write_text('keycloak_password = "no"\n')
    with pytest.raises(DeviceCAError, match="unknown settings keycloak_password"):
        Settings.load(home)


def test_realm_settings_name_what_differs():
    from device_ca.keycloak.realm import _differences, realm_settings

    wanted = realm_settings(dt.timedelta(days=7))
    assert wanted["eventsExpiration"] == 7 * 86400 and wanted["bruteForceProtected"] is True
    actual = {**wanted, "displayName": "kept", "attributes": {"adminEventsExpiration": str(7 * 86400), "other": "x"}}
    assert _differences(wanted, actual) == []
    edited = {**actual, "bruteForceProtected": False, "attributes": {"other": "x"}}
    assert _differences(wanted, edited) == ["bruteForceProtected", "attributes.adminEventsExpiration"]
