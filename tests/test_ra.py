"""Issue and revoke workflows against a real database (SQLite or PostgreSQL) with a software key.

Each refusal is checked for "nothing stored": no reservation, certificate or audit row, and
no call to the signer.
"""
from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from device_ca.ca.issuer import Issuer, PublicUrls
from device_ca.ca.serial import new_serial, to_hex
from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ca.lint import pkilint_gate
from helpers import CountingSigner, flip_signature_bit, make_csr, software_ca


@pytest.fixture
def ca(clock):
    return software_ca(clock)


@pytest.fixture
def signer(ca):
    return CountingSigner(ca[3])


@pytest.fixture
def issuer(ca, signer, clock):
    return Issuer(ca[2], signer, clock, PublicUrls("http://127.0.0.1:8080"), pkilint_gate)


@pytest.fixture
def ra(store, policies, issuer, clock):
    return RegistrationAuthority(store, policies, lambda: issuer, clock)


def counts(store) -> dict[str, int]:
    with store.db.engine.connect() as c:
        return {t: c.exec_driver_sql(f"SELECT COUNT(*) FROM {t}").scalar()
                for t in ("serial_reservations", "certificates", "audit_events", "outbox", "revocations", "devices")}


def test_issue_stores_certificate_audit_and_outbox(ra, store, ca):
    issued = ra.issue("door-lock", make_csr("lock-101"), device_id="lock-101", actor="test")
    cert = x509.load_pem_x509_certificate(issued.pem)
    cert.verify_directly_issued_by(ca[2])
    assert 64 <= cert.serial_number.bit_length() <= 159 and cert.serial_number > 0
    assert to_hex(cert.serial_number) == issued.record.serial
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ext.get_extension_for_class(x509.BasicConstraints).critical
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = ext.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == \
        ca[2].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    dp = ext.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value
    assert dp == "http://127.0.0.1:8080/crl/issuing.crl"
    aia = {a.access_method: a.access_location.value for a in ext.get_extension_for_class(x509.AuthorityInformationAccess).value}
    assert aia == {AuthorityInformationAccessOID.OCSP: "http://127.0.0.1:8080/ocsp",
                   AuthorityInformationAccessOID.CA_ISSUERS: "http://127.0.0.1:8080/ca/issuing.crt"}
    assert counts(store) == {"serial_reservations": 1, "certificates": 1, "audit_events": 2, "outbox": 1,
                             "revocations": 0, "devices": 1}
    stored = store.certificate(issued.record.serial)
    assert stored.der == cert.public_bytes(Encoding.DER) and stored.status == "good"
    assert [m.topic for m in store.outbox()] == ["keycloak.upsert"]
    report, _ = store.verify_audit()
    assert report.ok and report.events == 2


def test_device_id_taken_from_csr_subject(ra):
    issued = ra.issue("door-lock", make_csr("lock-77"), actor="test")
    assert issued.record.device_id == "lock-77"


BAD = {
    "flipped signature": lambda: flip_signature_bit(make_csr("lock-101", encoding=Encoding.DER)),
    "trailing bytes": lambda: make_csr("lock-101", encoding=Encoding.DER) + b"\x00",
    "two PEM blocks": lambda: make_csr("lock-101") + make_csr("lock-101"),
    "not a CSR": lambda: b"hello world",
    "RSA-1024": lambda: make_csr("lock-101", key=rsa.generate_private_key(65537, 1024)),
    "P-192": lambda: make_csr("lock-101", key=ec.generate_private_key(ec.SECP192R1())),
    "CA:TRUE": lambda: make_csr("lock-101", extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)]),
    "subject outside template": lambda: make_csr("lock-101", o="OtherCo"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_csr_changes_nothing(ra, store, signer, case):
    before = counts(store)
    with pytest.raises(DeviceCAError) as info:
        ra.issue("door-lock", BAD[case](), device_id="lock-101", actor="test")
    assert info.value.kind in (Kind.MALFORMED, Kind.POLICY_REJECTED)
    assert counts(store) == before and signer.calls == 0


def test_unknown_policy_changes_nothing(ra, store, signer):
    with pytest.raises(DeviceCAError) as info:
        ra.issue("toaster", make_csr("lock-101"), actor="test")
    assert info.value.kind is Kind.NOT_FOUND and "toaster" in str(info.value)
    assert counts(store)["audit_events"] == 0 and signer.calls == 0


def test_lint_failure_means_no_signature(store, policies, ca, signer, clock):
    def failing_linter(cert_der, issuer_der):
        raise DeviceCAError(Kind.POLICY_REJECTED, "pre-issuance lint failed: ERROR test.finding")

    ra = RegistrationAuthority(store, policies, lambda: Issuer(ca[2], signer, clock, PublicUrls("http://x"),
                                                               failing_linter), clock)
    with pytest.raises(DeviceCAError, match="lint"):
        ra.issue("door-lock", make_csr("lock-101"), actor="test")
    assert signer.calls == 0 and counts(store)["serial_reservations"] == 0


def test_corrupted_hsm_signature_is_never_issued(store, policies, ca, clock):
    bad = CountingSigner(ca[3], corrupt=True)
    ra = RegistrationAuthority(store, policies, lambda: Issuer(ca[2], bad, clock, PublicUrls("http://x")), clock)
    with pytest.raises(DeviceCAError) as info:
        ra.issue("door-lock", make_csr("lock-101"), actor="test")
    assert info.value.kind is Kind.INTERNAL and "does not verify" in str(info.value)
    assert bad.calls == 1 and counts(store)["certificates"] == 0
    assert len(ra.reconcile(grace=dt.timedelta(0))) == 1      # the serial stays reserved, never reused


def test_repeated_random_serial_is_rejected_and_retried(store, policies, issuer, clock, signer):
    fixed = new_serial()
    draws = iter([fixed, fixed, new_serial()])
    ra = RegistrationAuthority(store, policies, lambda: issuer, clock, serials=lambda: next(draws))
    first = ra.issue("door-lock", make_csr("lock-1"), actor="test")
    second = ra.issue("door-lock", make_csr("lock-2"), actor="test")
    assert first.record.serial == to_hex(fixed) and second.record.serial != first.record.serial
    assert counts(store)["certificates"] == 2 and counts(store)["serial_reservations"] == 2
    assert signer.calls == 2


def test_serial_randomness_failure_signs_nothing(store, policies, issuer, clock, signer):
    def broken():
        raise OSError("getrandom failed")

    ra = RegistrationAuthority(store, policies, lambda: issuer, clock, serials=broken)
    with pytest.raises(DeviceCAError, match="randomness") as info:
        ra.issue("door-lock", make_csr("lock-1"), actor="test")
    assert info.value.kind is Kind.INTERNAL and signer.calls == 0 and counts(store)["serial_reservations"] == 0


def _install_failing_trigger(store):
    with store.db.engine.begin() as c:
        if store.db.engine.dialect.name == "sqlite":
            c.exec_driver_sql("CREATE TRIGGER fail_insert BEFORE INSERT ON certificates WHEN NEW.device_id = 'lock-666' "
                              "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
        else:
            c.exec_driver_sql("CREATE FUNCTION fail_insert() RETURNS trigger AS $$ BEGIN "
                              "IF NEW.device_id = 'lock-666' THEN RAISE EXCEPTION 'injected failure'; END IF; "
                              "RETURN NEW; END $$ LANGUAGE plpgsql")
            c.exec_driver_sql("CREATE TRIGGER fail_insert BEFORE INSERT ON certificates "
                              "FOR EACH ROW EXECUTE FUNCTION fail_insert()")


def test_final_insert_failure_keeps_the_reservation_for_reconcile(ra, store, clock):
    _install_failing_trigger(store)
    with pytest.raises(DeviceCAError) as info:
        ra.issue("door-lock", make_csr("lock-666"), actor="test")
    # SQLite reports the trigger as an integrity error, PostgreSQL as a database error
    assert info.value.kind in (Kind.INTERNAL, Kind.DB_UNAVAILABLE) and "reconcile" in str(info.value)
    c = counts(store)
    assert c["certificates"] == 0 and c["serial_reservations"] == 1 and c["outbox"] == 0 and c["devices"] == 0
    clock.advance(dt.timedelta(minutes=10))
    pending = ra.reconcile()
    assert len(pending) == 1 and pending[0].device_id == "lock-666" and pending[0].state == "reserved"
    assert store.certificate(pending[0].serial) is None
    ra.issue("door-lock", make_csr("lock-1"), actor="test")        # others still issue
    assert store.verify_audit()[0].ok


def test_not_after_never_beyond_issuer(ra, ca, clock):
    clock.advance(ca[2].not_valid_after_utc - clock.now() - dt.timedelta(days=10))
    issued = ra.issue("door-lock", make_csr("lock-5"), actor="test")
    assert issued.record.not_after == ca[2].not_valid_after_utc


def test_revoke(ra, store):
    issued = ra.issue("door-lock", make_csr("lock-101"), actor="test")
    record = ra.revoke(issued.record.serial, "keyCompromise", actor="test")
    assert record.status == "revoked" and record.revocation_reason == "keyCompromise"
    assert store.certificate(issued.record.serial).status == "revoked"
    assert [m.topic for m in store.outbox()] == ["keycloak.upsert", "keycloak.disable"]
    assert store.verify_audit()[0].events == 3


def test_superseded_revocation_keeps_the_keycloak_client(ra, store):
    issued = ra.issue("door-lock", make_csr("lock-101"), actor="test")
    ra.revoke(issued.record.serial, "superseded", actor="test")
    assert [m.topic for m in store.outbox()] == ["keycloak.upsert"]


def test_revoke_unknown_and_twice(ra, store):
    issued = ra.issue("door-lock", make_csr("lock-101"), actor="test")
    with pytest.raises(DeviceCAError) as info:
        ra.revoke("01" + "ab" * 17, "keyCompromise", actor="test")
    assert info.value.kind is Kind.NOT_FOUND
    ra.revoke(issued.record.serial, "keyCompromise", actor="test")
    before = counts(store)
    with pytest.raises(DeviceCAError) as info:
        ra.revoke(issued.record.serial, "superseded", actor="test")
    assert info.value.kind is Kind.CONFLICT
    assert counts(store) == before
    assert store.certificate(issued.record.serial).revocation_reason == "keyCompromise"
    with pytest.raises(DeviceCAError) as info:
        ra.revoke(issued.record.serial, "certificateHold", actor="test")
    assert info.value.kind is Kind.MALFORMED


def test_concurrent_issuance_keeps_the_chain(ra, store):
    errors = []

    def work(i):
        try:
            ra.issue("door-lock", make_csr(f"lock-{i}"), actor="test")
        except Exception as exc:   # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report, _ = store.verify_audit()
    assert report.ok and report.events == 32
    assert counts(store)["certificates"] == 16


def test_warm_linter_lints_every_policy_shape_without_the_token(database_url, tmp_path, clock, ca):
    """What `device-ca serve` does before it forks: each policy x key type linted once, nothing
    signed, PKCS#11 not opened; a later certificate of such a shape needs no full lint."""
    from device_ca.ca.template_lint import TemplateLinter
    from device_ca.config import Settings
    from device_ca.services import ISSUING, Services
    from device_ca.store import AuditEvent, CaRecord
    full = []
    settings = Settings.load({"DEVICE_CA_HOME": str(tmp_path), "DEVICE_CA_DATABASE_URL": database_url,
                              "DEVICE_CA_POLICY_DIR": str(Path(__file__).parent.parent / "policies")})
    services = Services(settings, clock, linter=TemplateLinter(lambda c, i: (full.append(c), pkilint_gate(c, i))))
    issuing = ca[2]
    services.store.save_ca([CaRecord(ISSUING, "device-ca-issuing", "ec:P-256", issuing.public_bytes(Encoding.DER),
                                     to_hex(issuing.serial_number), issuing.not_valid_after_utc, clock.now())],
                           AuditEvent(action="ca.created", actor="test", at=clock.now()))
    try:
        shapes = services.warm_linter()          # policies differing only in values share a shape
        assert shapes == len(full) and 2 <= shapes <= sum(len(p.key_types) for p in services.policies)
        assert "token" not in services.__dict__ and counts(services.store)["serial_reservations"] == 0
        issuer = Issuer(issuing, CountingSigner(ca[3]), clock, PublicUrls("http://127.0.0.1:8080"), services.linter)
        RegistrationAuthority(services.store, services.policies, lambda: issuer, clock).issue(
            "door-lock", make_csr("lock-7"), device_id="lock-7", actor="test")
        assert len(full) == shapes                         # the real certificate's shape was known clean
    finally:
        services.store.db.dispose()


@pytest.mark.parametrize("state", ["expired", "not yet valid", "revoked", "renewed and revoked after grace"])
def test_reenroll_needs_a_current_good_certificate(ra, store, signer, policies, clock, ca, state):
    """RFC 7030 §4.2.2 re-enrollment with a certificate that is ours and of the right device, but
    expired, not yet valid or revoked: 403 (FORBIDDEN), nothing signed, nothing stored."""
    from device_ca.ra.enrollment import Caller, EstService

    est = EstService(ra, store, policies, clock, lambda: [ca[2]])
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ra.issue("door-lock", make_csr("lock-5", key=key), device_id="lock-5", actor="test")
    current = x509.load_pem_x509_certificate(issued.pem)
    sans = list(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)

    def renewal() -> bytes:                                  # what the device sends: same subject, SANs, key
        return make_csr("lock-5", key=key, sans=sans, encoding=Encoding.DER)

    if state == "expired":
        clock.advance(current.not_valid_after_utc - clock.now() + dt.timedelta(seconds=1))
    elif state == "not yet valid":
        clock.advance(current.not_valid_before_utc - clock.now() - dt.timedelta(seconds=1))
    elif state == "revoked":
        ra.revoke(issued.record.serial, "keyCompromise", actor="test")
    else:
        est.reenroll("door-lock", renewal(), Caller("127.0.0.1", certificate=current))
        clock.advance(dt.timedelta(days=1, seconds=1))           # door-lock's rotation_grace
        assert ra.revoke_superseded() == [issued.record.serial]
    before, signatures = counts(store), signer.calls
    with pytest.raises(DeviceCAError) as refused:
        est.reenroll("door-lock", renewal(), Caller("127.0.0.1", certificate=current))
    assert refused.value.kind is Kind.FORBIDDEN
    assert ("revoked" if "revoked" in state else "expired or not yet valid") in refused.value.detail
    assert counts(store) == before and signer.calls == signatures
