"""Policy files: ceilings in code, unknown keys refused, checks in order (STYLE 5)."""
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from device_ca.ca import csr as csrs
from device_ca.errors import DeviceCAError, Kind
from device_ca.policy import apply, device_id_from_subject, load_policy, parse_duration
from helpers import make_csr


def write(tmp_path, text, name="cam"):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


BASE = 'subject = "CN={device_id},O=Acme"\n'


def test_shipped_policies_load(policies):
    names = [p.name for p in policies]
    assert names == ["admin", "badge-reader", "door-lock", "env-sensor", "front-proxy", "manufacturing-station"]
    assert policies.get("admin").authorizes == ("admin-api",) and policies.get("admin").enrollment == ("admin",)
    assert policies.get("front-proxy").authorizes == ("proxy",) and policies.get("front-proxy").keycloak is None
    assert policies.get("manufacturing-station").keycloak is None          # stations get no Keycloak client
    assert policies.get("manufacturing-station").enrollment == ("admin",)  # issued by an operator only
    assert policies.get("door-lock").keycloak.access_token_lifespan == dt.timedelta(minutes=5)
    assert policies.get("badge-reader").keycloak.access_token_lifespan == dt.timedelta(minutes=5)
    assert policies.get("env-sensor").keycloak.access_token_lifespan == dt.timedelta(minutes=10)


def test_shipped_policies_take_the_articles_names_with_rfc9039_urns(policies):
    """Descriptive device ids (`door-lock-floor-1-room-101`, `badge-reader-entrance`) besides the
    short ones; the SAN is an RFC 9039 `urn:dev:org:<PEN>-<id>`; realm and scopes as in the
    smart-building example."""
    import re

    for policy, device in (("door-lock", "door-lock-floor-1-room-101"), ("door-lock", "lock-101"),
                           ("badge-reader", "badge-reader-entrance"), ("badge-reader", "br-7")):
        request = apply(policies.get(policy), csrs.load(make_csr(None)), device)
        (san,) = request.sans
        assert san == x509.UniformResourceIdentifier(f"urn:dev:org:32473-{device}")
        assert re.fullmatch(r"urn:dev:org:[1-9][0-9]*-[A-Za-z0-9._~-]+", san.value)       # RFC 9039 §4.4
    with pytest.raises(DeviceCAError):
        apply(policies.get("door-lock"), csrs.load(make_csr(None)), "badge-reader-entrance")
    assert {p.keycloak.realm for p in policies if p.keycloak} == {"smart-building"}
    assert policies.get("door-lock").keycloak.default_client_scopes == ("door-access",)
    assert policies.get("env-sensor").keycloak.default_client_scopes == ("device-telemetry",)
    assert policies.get("badge-reader").keycloak.device_authorization_grant is True
    assert policies.get("door-lock").keycloak.client_session_idle == dt.timedelta(minutes=30)


def test_minimal_policy_gets_defaults(tmp_path):
    p = load_policy(write(tmp_path, BASE))
    assert p.name == "cam" and p.key_types == ("ec:P-256",) and p.eku == ("clientAuth",)


@pytest.mark.parametrize("text, fragment", [
    (BASE + "colour = 'red'\n", "unknown keys: colour"),
    (BASE + "validity = '3650d'\n", "exceeds the ceiling"),
    (BASE + "key_types = ['rsa:1024']\n", "beyond what device-ca permits"),
    (BASE + "eku = ['codeSigning']\n", "beyond what device-ca permits"),
    (BASE + "enrollment = ['anyone']\n", "beyond what device-ca permits"),
    (BASE + "rotation_grace = '90d'\n", "exceeds the ceiling"),
    (BASE + "validity = 'forever'\n", "not a duration"),
    (BASE + "san = ['email:{device_id}@x']\n", "must be 'dns:...' or 'uri:...'"),
    (BASE + "manufacturer_cas = ['missing.pem']\n", "manufacturer CA file not found"),
    (BASE + "[keycloak]\nrealm='r'\naccess_token_lifespan='2h'\n", "exceeds the ceiling"),
    (BASE + "[keycloak]\nrealm='r'\nlifespan='5m'\n", "unknown keys in [keycloak]"),
    ('subject = "CN=fixed"\n', "must contain {device_id}"),
    ("key_types = ['ec:P-256']\n", "'subject' is required"),
    ("subject = [\n", "not valid TOML"),
])
def test_bad_policies_are_refused(tmp_path, text, fragment):
    with pytest.raises(DeviceCAError) as info:
        load_policy(write(tmp_path, text))
    assert info.value.kind is Kind.MALFORMED
    assert fragment in str(info.value) and "cam.toml" in str(info.value)


def test_parse_duration():
    assert parse_duration("5m") == dt.timedelta(minutes=5)
    assert parse_duration("2w") == dt.timedelta(days=14)
    with pytest.raises(ValueError):
        parse_duration("0d")


def test_apply_builds_the_template(policies):
    policy = policies.get("door-lock")
    request = apply(policy, csrs.load(make_csr("lock-101")), "lock-101")
    assert request.subject.rfc4514_string() == "CN=lock-101,OU=door-lock,O=BuildingCo"
    assert request.sans == (x509.UniformResourceIdentifier("urn:dev:org:32473-lock-101"),)
    assert request.validity == dt.timedelta(days=365)


def test_empty_csr_subject_takes_the_template(policies):
    request = apply(policies.get("door-lock"), csrs.load(make_csr(None)), "lock-7")
    assert request.subject.rfc4514_string() == "CN=lock-7,OU=door-lock,O=BuildingCo"


@pytest.mark.parametrize("csr_kwargs, device_id, fragment", [
    ({"cn": "lock-101", "o": "EvilCo"}, "lock-101", "outside policy door-lock"),
    ({"cn": "lock-999"}, "lock-101", "outside policy door-lock"),
    ({"cn": "lock-101"}, "camera-1", "does not match the policy's pattern"),
    ({"cn": "lock-101", "key": ec.generate_private_key(ec.SECP521R1())}, "lock-101", "not allowed by policy"),
    ({"cn": "lock-101", "sans": [x509.DNSName("evil.example")]}, "lock-101", "does not allow: DNSName:evil.example"),
])
def test_policy_rejections(policies, csr_kwargs, device_id, fragment):
    with pytest.raises(DeviceCAError) as info:
        apply(policies.get("door-lock"), csrs.load(make_csr(**csr_kwargs)), device_id)
    assert info.value.kind is Kind.POLICY_REJECTED and fragment in str(info.value)


def test_device_id_read_from_subject(policies):
    info = csrs.load(make_csr("lock-55"))
    assert device_id_from_subject(policies.get("door-lock"), info.subject) == "lock-55"
    assert device_id_from_subject(policies.get("door-lock"), csrs.load(make_csr(None)).subject) is None


def test_special_characters_in_device_id_are_escaped(tmp_path):
    p = load_policy(write(tmp_path, 'subject = "CN={device_id},O=Acme"\ndevice_id_pattern = ".+"\n'))
    request = apply(p, csrs.load(make_csr(None)), "a,b+c")
    assert [a.value for a in request.subject] == ["Acme", "a,b+c"]


@pytest.mark.parametrize("device_id", ["lock-1", 'a,b+c="d"', " lead", "trail ", "#hash", "ünï", "x\\y", "a;b<c>"])
def test_subject_from_the_parsed_template_equals_parsing_with_the_escaped_id(device_id, policies):
    """subject_name fills a template parsed once; it must give the DER that parsing the template
    with the RFC 4514-escaped device id gives."""
    from device_ca.policy.checks import escape_rdn_value, subject_name

    for policy in policies:
        parsed = x509.Name.from_rfc4514_string(policy.subject.replace("{device_id}", escape_rdn_value(device_id)))
        assert subject_name(policy, device_id).public_bytes() == parsed.public_bytes()


def test_a_policy_that_authorises_callers_is_issued_by_an_operator_only(tmp_path):
    """'authorizes' (the batch API for stations) requires enrollment = ["admin"]; the pipeline's
    check refuses every other way of asking for such a certificate, whatever the file says."""
    from device_ca.errors import DeviceCAError, Kind
    from device_ca.policy import load_policy
    from device_ca.ra.issuance import check_method

    base = 'subject = "CN={device_id},OU=station,O=X"\nauthorizes = ["batch-api"]\n'
    for enrollment, ok in (('["admin"]', True), ('["admin", "bulk"]', False), ('["bootstrap-token"]', False)):
        (tmp_path / "station.toml").write_text(base + f"enrollment = {enrollment}\n")
        if ok:
            station = load_policy(tmp_path / "station.toml")
        else:
            with pytest.raises(DeviceCAError, match="issued by an operator only"):
                load_policy(tmp_path / "station.toml")
    (tmp_path / "odd.toml").write_text(base.replace("batch-api", "everything") + 'enrollment = ["admin"]\n')
    with pytest.raises(DeviceCAError, match="authorizes"):
        load_policy(tmp_path / "odd.toml")
    check_method(station, "admin")
    for method in ("bulk", "bootstrap-token", "idevid", "reenroll"):
        with pytest.raises(DeviceCAError) as refused:
            check_method(station, method)
        assert refused.value.kind is Kind.FORBIDDEN and "only an operator" in refused.value.detail


def test_bulk_is_a_method_of_its_own(policies):
    from device_ca.errors import DeviceCAError
    from device_ca.ra.issuance import check_method

    check_method(policies.get("env-sensor"), "bulk")
    check_method(policies.get("badge-reader"), "admin")
    with pytest.raises(DeviceCAError, match="does not allow enrollment by bulk"):
        check_method(policies.get("badge-reader"), "bulk")          # admin alone no longer means bulk
