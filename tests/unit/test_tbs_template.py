"""The TBS template reproduces cryptography's builder byte for byte, for every kind of request."""
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_ca.ca.clock import FixedClock
from device_ca.ca.issuer import CertificateRequest, Issuer, PublicUrls
from device_ca.ca.template_lint import TemplateLinter
from device_ca.errors import DeviceCAError
from helpers import T0, software_ca

KEYS = {"ec:P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "ec:P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "rsa:2048": lambda: rsa.generate_private_key(65537, 2048)}


class CountingLinter(TemplateLinter):
    """Counts the certificates that went through the builder and the linter (not the template)."""

    def __init__(self, linter):
        super().__init__(linter)
        self.built = 0

    def __call__(self, cert_der, issuer_der):
        self.built += 1
        super().__call__(cert_der, issuer_der)


@pytest.fixture(scope="module", params=["ec:P-256", "ec:P-384", "rsa:3072"])
def issuers(request):
    """(template issuer, builder-only issuer) of one CA; lint is counted, not run (no pkilint here)."""
    _root, _root_key, issuing, issuing_key = software_ca(FixedClock(T0), request.param)
    full = []
    template = Issuer(issuing, issuing_key, FixedClock(T0), PublicUrls("http://127.0.0.1:8080"),
                      CountingLinter(lambda c, i: full.append(c)))
    built = Issuer(issuing, issuing_key, FixedClock(T0), PublicUrls("http://127.0.0.1:8080"), None)
    return template, built, full


def _request(key_type, device, sans=True, subject=True, ekus=(ExtendedKeyUsageOID.CLIENT_AUTH,), agreement=False):
    names = (x509.UniformResourceIdentifier(f"urn:dev:ops:x-{device}"), x509.DNSName(f"{device}.devices.example"))
    return CertificateRequest(
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device),
                           x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "door-lock, \"west\""),
                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, "BuildingCo")]) if subject else x509.Name([]),
        public_key=KEYS[key_type]().public_key(), validity=dt.timedelta(days=365),
        sans=names[:sans] if isinstance(sans, int) and not isinstance(sans, bool) else (names if sans else ()),
        ekus=ekus, key_agreement=agreement)


CASES = [dict(), dict(sans=False), dict(sans=1), dict(subject=False),
         dict(ekus=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH)), dict(agreement=True)]


@pytest.mark.parametrize("key_type", list(KEYS))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_template_tbs_equals_the_builders(issuers, key_type, case):
    template, built, full = issuers
    validities = [(T0, T0 + dt.timedelta(days=365)), (T0 + dt.timedelta(microseconds=654321), dt.datetime(
        2051, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)), (T0, dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc))]
    serials = [0x01 << 63, (0x01 << 159) - 1, 0x7F, 0x80, 0x01_23_45 << 100]
    linted, built_before = len(full), template.linter.built
    for i, (serial, validity) in enumerate(zip(serials, validities * 2)):
        request = _request(key_type, f"lock-{case}-{i}", **CASES[case])
        fast = template.prepare(request, serial, validity)
        slow = built.prepare(request, serial, validity)
        assert fast.tbs == slow.tbs
        assert (fast.signature_algorithm, fast.public_key_der, fast.not_before, fast.not_after) == \
               (slow.signature_algorithm, slow.public_key_der, slow.not_before.replace(microsecond=0),
                slow.not_after.replace(microsecond=0))
        template.sign(fast).verify_directly_issued_by(template.certificate)
    assert len(full) - linted <= 1                  # the first of a template is linted in full, the rest not
    assert template.linter.built - built_before <= 1           # ... and the others came from the template


def test_value_problems_are_refused_on_the_template_path(issuers):
    template, _built, _full = issuers
    template.prepare(_request("ec:P-256", "lock-1"), 1 << 63)
    bad = _request("ec:P-256", "lock-2")
    bad = CertificateRequest(subject=bad.subject, public_key=bad.public_key, validity=bad.validity,
                             sans=(x509.UniformResourceIdentifier("not a uri"), bad.sans[1]))
    with pytest.raises(DeviceCAError, match="invalid URI"):
        template.prepare(bad, 1 << 63)
    with pytest.raises(DeviceCAError, match="serial number out of range"):
        template.prepare(_request("ec:P-256", "lock-3"), 1 << 159)
