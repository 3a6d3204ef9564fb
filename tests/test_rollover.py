"""Issuing-CA rollover (ra/rollover.py) through the composition root with software keys, on the
database under test: the new generation is signed by the root and issues, the old one keeps its CRL
and OCSP answers, OCSP requests go to the issuer their CertID names, devices of the old generation
re-enroll into the new one (not from a revoked or retired generation), and an old generation whose
certificates have all expired is retired. SoftHSM, the CLI, openssl and EST clients:
tests/integration/test_rollover.py."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from device_ca.ca.authority import CaProfile
from device_ca.ca.lint import pkilint_gate
from device_ca.ca.serial import to_hex
from device_ca.config import Settings
from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.enrollment import Caller
from device_ca.ra.janitor import Janitor
from device_ca.ra.status_routing import StatusRouter
from device_ca.services import Services
from device_ca.web.status import StatusApp
from helpers import CountingSigner, make_csr
from test_publication import SoftwareToken

URL = "http://127.0.0.1:8080"


class Token(SoftwareToken):
    label = "test-token"

    def signer(self, label):
        key = self.keys.get(label)
        if key is None:
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, f"no key {label!r}")
        return key


def _services(database_url, home, clock, token) -> Services:
    """A process of the CA (a 'node'): its own objects, the shared database and token."""
    settings = Settings.load({"DEVICE_CA_HOME": str(home), "DEVICE_CA_DATABASE_URL": database_url,
                              "DEVICE_CA_PUBLIC_URL": URL,
                              "DEVICE_CA_POLICY_DIR": str(Path(__file__).parent.parent / "policies")})
    services = Services(settings, clock, linter=pkilint_gate)
    services.__dict__["token"] = token
    return services


@pytest.fixture
def node(database_url, tmp_path, clock):
    token = Token()
    made = []

    def start() -> Services:
        services = _services(database_url, tmp_path, clock, token)
        made.append(services)
        return services

    first = start()
    first.admin.init_ca("ec:P-256", CaProfile(organization="Test CA"), "test")
    yield start, token
    for services in made:
        services.store.db.dispose()


def _enroll(services, device_id: str, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    issued = services.ra.issue("door-lock", make_csr(device_id, key=key), device_id=device_id, actor="test")
    return x509.load_der_x509_certificate(issued.record.der), key


def _urls(certificate: x509.Certificate) -> tuple[str, str]:
    dp = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value
    aia = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    ca_issuers = [a.access_location.value for a in aia if a.access_method == AuthorityInformationAccessOID.CA_ISSUERS]
    return dp, ca_issuers[0]


def _audit(services, action: str) -> int:
    with services.store.db.reading() as c:
        return c.exec_driver_sql(f"SELECT count(*) FROM audit_events WHERE action = '{action}'").scalar()


def _ocsp(status: StatusApp, leaf, issuer) -> bytes:
    request = x509_ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    code, _, body = status.handle("POST", "/ocsp", "/ocsp", request.public_bytes(Encoding.DER), "127.0.0.1")
    assert code == 200
    return body


def test_rollover_issues_with_a_new_generation_and_the_old_one_keeps_answering(node, clock):
    start, token = node
    old_node = start()
    old_leaf, old_key = _enroll(old_node, "lock-1")
    old_ca = old_node.issuer.certificate

    record = old_node.rollover.rollover(None, "test")
    assert record.name == "issuing-2" and record.key_label.startswith("device-ca-issuing-")
    assert _audit(old_node, "ca.rollover") == 1
    new_node = start()                                          # a node restarted after the rollover
    new_ca = new_node.issuer.certificate
    root = new_node.ca_certificates()["root"]
    assert new_ca.subject != old_ca.subject and new_ca.issuer == root.subject
    new_ca.verify_directly_issued_by(root)
    assert _urls(new_ca) == (f"{URL}/crl/root.crl", f"{URL}/ca/root.crt")

    new_leaf, _ = _enroll(new_node, "lock-2")
    new_leaf.verify_directly_issued_by(new_ca)
    assert _urls(old_leaf) == (f"{URL}/crl/issuing.crl", f"{URL}/ca/issuing.crt")
    assert _urls(new_leaf) == (f"{URL}/crl/issuing-2.crl", f"{URL}/ca/issuing-2.crt")
    assert new_node.store.certificate(to_hex(new_leaf.serial_number)).issuer == "issuing-2"
    assert new_node.cacerts() == [new_ca, old_ca, root]

    # the janitor signs both generations' CRLs and responders
    Janitor(new_node.publisher, new_node.ra, new_node.store.leases, publishers=new_node.signing_publishers,
            retire=new_node.rollover.retire_due).prepare(wait=1)
    for name, ca in (("issuing", old_ca), ("issuing-2", new_ca)):
        crl = x509.load_der_x509_crl(new_node.store.status.latest_crl(name).der)
        assert crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())

    # OCSP: each CertID answered by its own issuer's responder; an unknown issuer is unauthorized
    router = StatusRouter(new_node.signing_publishers, lambda n: new_node.ca_certificates()[n])
    status = StatusApp(new_node.publisher, route=router.route, crl_of=new_node.store.status.latest_crl)
    for leaf, ca in ((old_leaf, old_ca), (new_leaf, new_ca)):
        answer = x509_ocsp.load_der_ocsp_response(_ocsp(status, leaf, ca))
        assert answer.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.certificate_status == x509_ocsp.OCSPCertStatus.GOOD and answer.serial_number == leaf.serial_number
        answer.certificates[0].verify_directly_issued_by(ca)
    stranger = Token().generate("x", "ec:P-256")
    fake = x509.CertificateBuilder().subject_name(old_ca.subject).issuer_name(old_ca.subject) \
        .public_key(stranger.public_key()).serial_number(7).not_valid_before(clock.now()) \
        .not_valid_after(clock.now() + dt.timedelta(days=1)).sign(stranger, hashes.SHA256())
    answer = x509_ocsp.load_der_ocsp_response(_ocsp(status, old_leaf, fake))
    assert answer.response_status == x509_ocsp.OCSPResponseStatus.UNAUTHORIZED
    for name in ("issuing", "issuing-2"):
        assert status.handle("GET", f"/crl/{name}.crl", f"/crl/{name}.crl", b"", "127.0.0.1")[0] == 200

    # the old generation's device re-enrolls into the new generation
    sans = list(old_leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    renewed = new_node.est.reenroll("door-lock", make_csr("lock-1", key=old_key, sans=sans, encoding=Encoding.DER),
                                    Caller("127.0.0.1", certificate=old_leaf))
    renewed.certificate.verify_directly_issued_by(new_ca)
    assert renewed.record.issuer == "issuing-2"


def test_rollover_without_the_root_key_changes_nothing(node):
    start, token = node
    services = start()
    root_key = token.keys.pop("device-ca-root")
    labels, records = sorted(token.labels()), services.store.ca_certificates()
    with pytest.raises(DeviceCAError) as refused:
        services.rollover.rollover("ec:P-256", "test")
    assert refused.value.kind is Kind.HSM_UNAVAILABLE and "root key" in refused.value.detail
    assert sorted(token.labels()) == labels and services.store.ca_certificates() == records
    assert _audit(services, "ca.rollover") == 0
    token.keys["device-ca-root"] = root_key
    with pytest.raises(DeviceCAError) as refused:
        services.rollover.rollover("rsa:1024", "test")
    assert refused.value.kind is Kind.MALFORMED and sorted(token.labels()) == sorted(labels + ["device-ca-root"])


def test_a_revoked_generation_cannot_reenroll_into_the_new_one(node):
    start, token = node
    services = start()
    leaf, key = _enroll(services, "lock-3")
    services.rollover.rollover(None, "test")
    services.root.revoke_issuing("issuing", "cACompromise", "test")
    restarted = start()
    assert restarted.issuer.urls.ca_name == "issuing-2"
    assert not restarted.est.is_ours(leaf) and leaf.issuer not in [c.subject for c in restarted.cacerts()]
    sans = list(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    with pytest.raises(DeviceCAError) as refused:
        restarted.est.reenroll("door-lock", make_csr("lock-3", key=key, sans=sans, encoding=Encoding.DER),
                               Caller("127.0.0.1", certificate=leaf))
    assert refused.value.kind is Kind.UNAUTHORIZED
    assert [p.ca for p in restarted.signing_publishers()] == ["issuing-2", "issuing"]   # its CRL goes on


def test_an_old_generation_retires_when_its_last_certificate_expires(node, clock):
    start, token = node
    services = start()
    leaf, _ = _enroll(services, "lock-4")
    services.rollover.rollover(None, "test")
    restarted = start()
    assert restarted.rollover.retire_due() == []
    clock.advance(leaf.not_valid_after_utc - clock.now() - dt.timedelta(seconds=1))
    assert restarted.rollover.retire_due() == []
    clock.advance(dt.timedelta(seconds=2))
    assert restarted.rollover.retire_due() == ["issuing"]
    assert _audit(restarted, "ca.retired") == 1
    assert [p.ca for p in restarted.signing_publishers()] == ["issuing-2"]
    assert restarted.cacerts() == [restarted.issuer.certificate, restarted.ca_certificates()["root"]]
    with restarted.store.db.reading() as c:
        assert c.exec_driver_sql("SELECT status FROM ca_certificates WHERE name = 'issuing'").scalar() == "retired"
    assert restarted.rollover.retire_due() == []            # the current generation never retires


def test_a_running_node_follows_a_rollover_made_on_another_once_the_new_generation_answers_ocsp(node, clock):
    start, token = node
    running, operator = start(), start()                 # a serving node's worker; the operator's CLI elsewhere
    before, _ = _enroll(running, "lock-20")
    old_ca = running.issuer.certificate
    assert running.follow_rollover() is None and running.ca_certificates().keys() == {"root", "issuing"}

    operator.rollover.rollover(None, "test")
    # the new generation has no OCSP responder yet: the running node keeps issuing with the old one
    assert running.follow_rollover() is None
    still, _ = _enroll(running, "lock-21")
    still.verify_directly_issued_by(old_ca)

    janitor = Janitor(running.publisher, running.ra, running.store.leases, publishers=running.signing_publishers)
    assert janitor.run_once()                            # the round makes issuing-2's CRL and responder
    assert running.store.status.latest_crl("issuing-2") is not None
    assert running.follow_rollover() == "issuing-2"
    assert running.follow_rollover() is None             # once
    new_ca = running.ca_certificate("issuing-2")         # CA certificates read again
    after, _ = _enroll(running, "lock-22")
    after.verify_directly_issued_by(new_ca)
    assert running.store.certificate(to_hex(after.serial_number)).issuer == "issuing-2"
    status = StatusApp(running.publisher, route=StatusRouter(running.signing_publishers, running.ca_certificate).route)
    for leaf, ca in ((before, old_ca), (after, new_ca)):
        answer = x509_ocsp.load_der_ocsp_response(_ocsp(status, leaf, ca))
        assert answer.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
        answer.certificates[0].verify_directly_issued_by(ca)
