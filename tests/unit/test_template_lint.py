"""Template linting: pkilint once per shape, value checks on every certificate."""
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca.clock import FixedClock
from device_ca.ca.issuer import CertificateRequest, Issuer, PublicUrls
from device_ca.ca.lint import lint_certificate
from device_ca.ca.template_lint import TemplateLinter, check_values, shape
from device_ca.errors import DeviceCAError
from device_ca.ca.lint import pkilint_gate
from helpers import T0, software_ca


def _request(cn="lock-1", san="urn:dev:ops:x-lock-1", ou="door-lock"):
    return CertificateRequest(
        subject=x509.Name.from_rfc4514_string(f"CN={cn},OU={ou},O=BuildingCo"),
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(), validity=dt.timedelta(days=365),
        sans=(x509.UniformResourceIdentifier(san),))


@pytest.fixture
def issuer_and_calls():
    root, root_key, issuing, issuing_key = software_ca()
    calls = []

    def counting(cert_der, issuer_der):
        calls.append(cert_der)
        pkilint_gate(cert_der, issuer_der)

    linter = TemplateLinter(counting)
    return Issuer(issuing, issuing_key, FixedClock(T0), PublicUrls("http://127.0.0.1:8080"), linter), linter, calls


def test_pkilint_runs_once_per_shape(issuer_and_calls):
    issuer, linter, calls = issuer_and_calls
    for i in range(5):
        issuer.sign(issuer.prepare(_request(f"lock-{i}", f"urn:dev:ops:x-lock-{i}"), 0x0100 + i))
    assert len(calls) == 1 and linter.full_runs == 1
    issuer.prepare(_request("lock-9", ou="door-lock-v2"), 0x0200)     # same shape: values differ only
    assert len(calls) == 1
    no_san = CertificateRequest(subject=x509.Name.from_rfc4514_string("CN=a,O=B"),
                                public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
                                validity=dt.timedelta(days=30))
    issuer.prepare(no_san, 0x0300)                                       # a new shape: full lint again
    assert len(calls) == 2


@pytest.mark.parametrize("request_kwargs, fragment", [
    ({"ou": "x" * 65}, "longer than 64"),
    ({"san": "not a uri"}, "invalid URI"),
    ({"cn": "bad\x01value"}, "control characters"),
])
def test_value_problems_are_caught_without_pkilint(issuer_and_calls, request_kwargs, fragment):
    issuer, linter, calls = issuer_and_calls
    issuer.prepare(_request(), 0x0100)
    with pytest.raises(DeviceCAError, match=fragment):
        issuer.prepare(_request(**request_kwargs), 0x0101)
    assert len(calls) == 1


@pytest.mark.parametrize("request_kwargs", [{"ou": "x" * 65}, {"san": "not a uri"}])
def test_value_checks_agree_with_pkilint(issuer_and_calls, request_kwargs):
    """Whatever the value checks refuse, pkilint flags too (they mirror its value-dependent rules)."""
    issuer, _, _ = issuer_and_calls
    from device_ca.ca.issuer import throwaway_key
    prepared_builder = issuer._builder(_request(**request_kwargs), 0x0555, T0, T0 + dt.timedelta(days=1))
    cert = prepared_builder.sign(throwaway_key(issuer.key_type), issuer.hash)
    assert check_values(cert)
    findings = lint_certificate(cert.public_bytes(Encoding.DER), issuer.der)
    assert any(f.severity in ("ERROR", "FATAL") for f in findings)


def test_shape_ignores_values_but_not_structure():
    root, root_key, issuing, issuing_key = software_ca()
    issuer = Issuer(issuing, issuing_key, FixedClock(T0), PublicUrls("http://127.0.0.1:8080"))
    a = issuer.sign(issuer.prepare(_request("lock-1"), 0x0100))
    b = issuer.sign(issuer.prepare(_request("lock-22222"), 0x0101))
    c_builder = issuer._builder(_request("lock-3"), 0x0102, T0, T0 + dt.timedelta(days=1))
    c_builder = c_builder.add_extension(x509.OCSPNoCheck(), critical=False)
    c = c_builder.sign(issuing_key, issuer.hash)
    assert shape(a) == shape(b) and shape(a) != shape(c)
