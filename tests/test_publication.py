"""The OCSP hot path of StatusPublisher against a real database (SQLite or PostgreSQL) with
software keys: cached nonce-less answers are the same bytes until half their validity, and a
revocation committed by anyone is on the very next answer."""
from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp

from device_ca.ca.issuer import Issuer, PublicUrls
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.publication import OCSP_VALIDITY, StatusPublisher
from device_ca.ca.lint import pkilint_gate
from helpers import CountingSigner, make_csr, software_ca


class SoftwareToken:
    """Keys by label in memory: the unit-test stand-in for the token (integration tests use SoftHSM)."""

    def __init__(self):
        self.keys = {}

    def generate(self, label, key_type):
        self.keys[label] = CountingSigner(ec.generate_private_key(ec.SECP256R1()))
        return self.keys[label]

    def find(self, label):
        return self.keys.get(label)

    def labels(self):
        return list(self.keys)

    def can_generate(self, key_type):
        return True          # software keys of every type device-ca knows

    def require(self, *key_types):
        pass


@pytest.fixture
def setup(store, policies, clock, tmp_path):
    ca = software_ca(clock)
    signer = CountingSigner(ca[3])
    issuer = Issuer(ca[2], signer, clock, PublicUrls("http://127.0.0.1:8080"), pkilint_gate)
    ra = RegistrationAuthority(store, policies, lambda: issuer, clock)
    token = SoftwareToken()
    service = StatusPublisher(store, lambda: issuer, token, clock, tmp_path / "issuing.crl")
    service.ensure_responder()
    service.fresh = lambda: StatusPublisher(store, lambda: issuer, token, clock, tmp_path / "issuing.crl")
    record = ra.issue("door-lock", make_csr("lock-7"), actor="test").record
    leaf = x509.load_der_x509_certificate(record.der)
    return ra, service, signer, record, _request(leaf, ca[2]), ca[2]


def _request(leaf, issuer, nonce: bytes | None = None) -> bytes:
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def _status(der):
    return x509_ocsp.load_der_ocsp_response(der).certificate_status.name


def test_cached_answer_is_reused_until_half_its_validity(setup, clock):
    _, service, signer, _, request, _ = setup
    first = service.respond(request)
    assert _status(first.der) == "GOOD" and first.cacheable
    signed = signer.calls
    assert service.respond(request) is first                 # same object, no database round trip needed
    clock.advance(OCSP_VALIDITY / 2 - dt.timedelta(seconds=1))
    assert service.respond(request) is first
    clock.advance(dt.timedelta(seconds=1))                    # half-way: sign a fresh one
    fresh = service.respond(request)
    assert fresh is not first and _status(fresh.der) == "GOOD"
    assert fresh.this_update > first.this_update
    assert signer.calls == signed                             # the responder key signs, not the CA's


def test_revocation_is_on_the_next_answer_after_a_cached_good(setup):
    ra, service, _, record, request, _ = setup
    assert _status(service.respond(request).der) == "GOOD"
    assert _status(service.respond(request).der) == "GOOD"
    ra.revoke(record.serial, "keyCompromise", actor="test")
    answer = service.respond(request)
    response = x509_ocsp.load_der_ocsp_response(answer.der)
    assert response.certificate_status.name == "REVOKED"
    assert response.revocation_reason == x509.ReasonFlags.key_compromise


def test_answers_with_a_nonce_are_signed_live_and_never_cached(setup):
    _, service, _, record, _, issuing = setup
    request = _request(x509.load_der_x509_certificate(record.der), issuing, nonce=b"n" * 16)
    first, second = service.respond(request), service.respond(request)
    assert not first.cacheable and first is not second
    for answer in (first, second):
        nonce = x509_ocsp.load_der_ocsp_response(answer.der).extensions.get_extension_for_class(x509.OCSPNonce)
        assert nonce.value.nonce == b"n" * 16


def _responder_signatures(service) -> int:
    return sum(key.calls for key in service.token.keys.values())


def test_presigned_answers_are_served_without_signing(setup, store):
    ra, service, _, record, request, _ = setup
    other = ra.issue("door-lock", make_csr("lock-8"), actor="test").record
    assert service.presign() == 2                             # one per issued certificate
    assert service.presign() == 0                             # nothing stale: nothing signed again
    before = _responder_signatures(service)
    restarted = service.fresh()                               # a new worker: empty memory caches
    answer = restarted.respond(request)
    assert _responder_signatures(service) == before           # served the stored bytes
    assert answer.der == store.status.status_and_presigned(record.serial)[1].der
    assert _status(answer.der) == "GOOD"
    assert other.serial != record.serial


def test_revocation_makes_the_presigned_answer_stale_at_once(setup, store):
    ra, service, _, record, request, _ = setup
    service.presign()
    ra.revoke(record.serial, "keyCompromise", actor="test")
    assert _status(service.fresh().respond(request).der) == "REVOKED"      # never the stored good
    assert service.presign() == 1
    stored = store.status.status_and_presigned(record.serial)[1]
    assert stored.status == "revoked" and _status(stored.der) == "REVOKED"


def test_presigned_answers_are_refreshed_well_before_next_update(setup, store, clock):
    _, service, _, record, _, _ = setup
    service.presign()
    first = store.status.status_and_presigned(record.serial)[1]
    clock.advance(OCSP_VALIDITY / 4 - dt.timedelta(seconds=1))
    assert service.presign() == 0
    clock.advance(dt.timedelta(seconds=2))
    assert service.presign() == 1
    second = store.status.status_and_presigned(record.serial)[1]
    assert second.this_update > first.this_update and second.next_update - clock.now() > OCSP_VALIDITY / 2


def test_a_stored_answer_older_than_half_its_validity_is_not_served(setup, store, clock):
    _, service, _, record, request, _ = setup
    service.presign()
    stored = store.status.status_and_presigned(record.serial)[1]
    clock.advance(OCSP_VALIDITY / 2)                          # the janitor was down: not refreshed
    answer = service.fresh().respond(request)
    assert answer.der != stored.der and answer.this_update == clock.now()


def test_token_unavailable_answers_try_later(setup, store, clock, tmp_path):
    """The real token boundary (device_ca.token.CaToken) on a PKCS#11 module that is not there: the
    HsmError becomes HSM_UNAVAILABLE there, and OCSP answers tryLater (unsigned), not internalError."""
    import hsm
    from device_ca.token import CaToken

    ra, service, _, _, request, issuing = setup
    missing = CaToken(lambda: hsm.TokenConfig(module=str(tmp_path / "no-such-pkcs11.so"), token_label="x", pin="1"))
    publisher = StatusPublisher(store, lambda: service._issuer(), missing, clock, tmp_path / "issuing.crl")
    for der in (request, _request(x509.load_der_x509_certificate(setup[3].der), issuing, nonce=b"m" * 16)):
        answer = publisher.respond(der)
        response = x509_ocsp.load_der_ocsp_response(answer.der)
        assert response.response_status == x509_ocsp.OCSPResponseStatus.TRY_LATER and not answer.cacheable


def test_every_node_writes_the_newest_crl_whoever_signed_it(setup, store, tmp_path):
    """Issue 17, item 2: two nodes (two publishers, their own CRL files, one database). The CRL node
    A signs reaches node B's file on B's next janitor round; B never writes back an older one."""
    from device_ca.ra.publication import _crl_number

    ra, service, *_ = setup
    node_b = StatusPublisher(store, service._issuer, service.token, service.clock, tmp_path / "b" / "issuing.crl")
    first = service.generate_crl()
    assert node_b.sync_crl_file() is True and _crl_number(node_b.crl_path) == first.number
    assert node_b.sync_crl_file() is False                            # nothing newer: nothing written
    second = service.generate_crl()
    assert second.number > first.number
    assert node_b.sync_crl_file() is True and node_b.crl_path.read_bytes() == second.der
    node_b.crl_path.write_bytes(b"garbage")                           # a damaged file is replaced too
    node_b._file_number = None
    assert node_b.sync_crl_file() is True and _crl_number(node_b.crl_path) == second.number
