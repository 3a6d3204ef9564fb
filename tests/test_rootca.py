"""The root CRL and the revocation of an issuing CA (ra/rootca.py) on the database under test
(SQLite or PostgreSQL) with software keys: the root CRL has its own numbers and a year of validity,
is refreshed when half of it is left and only while the root key is present, lists a revoked
issuing CA, and a revoked issuing CA reserves no serial and signs nothing more. The real CLI, SoftHSM
and relying parties: tests/integration/test_root_crl.py."""
from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca import lint
from device_ca.ca.authority import CaProfile, build_issuing, build_root
from device_ca.ca.issuer import Issuer, PublicUrls
from device_ca.ca.lint import pkilint_crl_gate, pkilint_gate
from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.janitor import ROTATION_EVERY, Janitor
from device_ca.ra.publication import StatusPublisher
from device_ca.ra.rootca import ROOT_CRL_VALIDITY, RootAuthority
from device_ca.store import AuditEvent, CaRecord
from device_ca.store.db import MIGRATIONS
from helpers import CountingSigner, make_csr
from test_publication import SoftwareToken


class Token(SoftwareToken):
    label = "test-token"


@pytest.fixture
def pki(store, policies, clock, tmp_path):
    """A CA as ``init`` makes it (issuing CA with the root's CRL DP and AIA), its records stored."""
    root_key, issuing_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    profile = CaProfile(organization="Test CA")
    root = build_root(root_key, profile, clock, pkilint_gate)
    issuing = build_issuing(root, root_key, issuing_key.public_key(), profile, clock, pkilint_gate,
                            root_urls=PublicUrls("http://127.0.0.1:8080", "root"))
    store.save_ca([CaRecord(name=name, key_label=f"device-ca-{name}", key_type="ec:P-256",
                            der=c.public_bytes(Encoding.DER), serial=format(c.serial_number, "x"),
                            not_after=c.not_valid_after_utc, created_at=clock.now())
                   for name, c in (("root", root), ("issuing", issuing))],
                  AuditEvent(action="ca.created", actor="test", at=clock.now()))
    token = Token()
    token.keys["device-ca-root"] = CountingSigner(root_key)
    issuer = Issuer(issuing, CountingSigner(issuing_key), clock, PublicUrls("http://127.0.0.1:8080"), pkilint_gate)
    ra = RegistrationAuthority(store, policies, lambda: issuer, clock)
    authority = RootAuthority(store, token, clock, tmp_path / "crl" / "root.crl", pkilint_crl_gate)
    publisher = StatusPublisher(store, lambda: issuer, token, clock, tmp_path / "crl" / "issuing.crl")
    return authority, ra, publisher, token, root, issuing


def _audit(store, action: str) -> list:
    with store.db.reading() as c:
        return c.exec_driver_sql(f"SELECT details FROM audit_events WHERE action = '{action}' ORDER BY seq").all()


def _reservations(store) -> int:
    with store.db.reading() as c:
        return c.exec_driver_sql("SELECT count(*) FROM serial_reservations").scalar()


def test_issuing_ca_certificate_names_the_root_crl_and_the_root_and_lints_clean(pki):
    *_, root, issuing = pki
    dp = issuing.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for n in dp[0].full_name] == ["http://127.0.0.1:8080/crl/root.crl"]
    aia = issuing.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in aia] == \
        [(x509.AuthorityInformationAccessOID.CA_ISSUERS, "http://127.0.0.1:8080/ca/root.crt")]
    findings = lint.lint_certificate(issuing.public_bytes(Encoding.DER), root.public_bytes(Encoding.DER))
    assert findings == []


def test_root_crl_has_its_own_numbers_a_year_of_validity_and_its_audit_event(pki, store, clock):
    authority, ra, publisher, token, root, _ = pki
    assert publisher.generate_crl().number == 1              # the issuing CA's first CRL
    crl = authority.generate_crl("cli:test")
    assert crl.number == 1                                   # the root's own first CRL, beside it
    parsed = x509.load_der_x509_crl(crl.der)
    assert parsed.issuer == root.subject and parsed.is_signature_valid(root.public_key())
    assert len(parsed) == 0
    assert parsed.next_update_utc - parsed.last_update_utc == ROOT_CRL_VALIDITY
    assert lint.lint_crl(crl.der) == []
    assert authority.crl_path.read_bytes() == crl.der
    assert authority.generate_crl("cli:test").number == 2
    assert publisher.latest_crl().number == 1 and authority.latest_crl().number == 2
    assert len(_audit(store, "crl.signed")) == 2
    assert token.keys["device-ca-root"].calls == 2
    assert store.verify_audit()[0].ok


def test_root_crl_is_refreshed_when_half_is_left_and_only_with_the_root_key(pki, clock):
    authority, *_ = pki
    assert authority.refresh() is not None                  # none yet: signed
    assert authority.refresh() is None and authority.problem is None
    clock.advance(ROOT_CRL_VALIDITY / 2 - dt.timedelta(seconds=1))
    assert authority.refresh() is None
    clock.advance(dt.timedelta(seconds=1))
    root_key = authority.token.keys.pop("device-ca-root")    # the offline root: not connected
    assert authority.refresh() is None and "crl generate --root" in authority.problem
    authority.token.keys["device-ca-root"] = root_key
    assert authority.refresh().number == 2


def test_revoking_the_issuing_ca_lists_it_in_the_root_crl_and_stops_issuance(pki, store, clock):
    authority, ra, publisher, token, root, issuing = pki
    good = ra.issue("door-lock", make_csr("lock-1"), actor="test").record
    clock.advance(dt.timedelta(minutes=1))
    revoked, crl = authority.revoke_issuing("issuing", "cACompromise", "cli:test")
    assert revoked.status == "revoked" and revoked.revocation_reason == "cACompromise"
    entry = x509.load_der_x509_crl(crl.der).get_revoked_certificate_by_serial_number(issuing.serial_number)
    assert entry is not None and entry.revocation_date_utc == clock.now()
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.ca_compromise
    assert lint.lint_crl(crl.der) == []
    events = _audit(store, "ca.revoked")
    assert len(events) == 1 and '"cACompromise"' in events[0][0]
    assert store.ca_certificates()["issuing"].status == "revoked"

    before = (_reservations(store), store.audit_head())
    with pytest.raises(DeviceCAError) as refused:
        ra.issue("door-lock", make_csr("lock-2"), actor="test")
    assert refused.value.kind is Kind.CA_UNAVAILABLE
    assert (_reservations(store), store.audit_head()) == before       # nothing reserved, nothing signed
    assert store.certificate(good.serial).status == "good"            # its own status is unchanged
    assert store.verify_audit()[0].ok


def test_revocation_refusals_change_nothing(pki, store):
    authority, *_ = pki
    head = store.audit_head()
    for name, reason, kind in (("root", "cACompromise", Kind.MALFORMED), ("issuing-9", "cACompromise", Kind.NOT_FOUND),
                               ("issuing", "aACompromise", Kind.MALFORMED), ("issuing", "certificateHold", Kind.MALFORMED)):
        with pytest.raises(DeviceCAError) as refused:
            authority.revoke_issuing(name, reason, "cli:test")
        assert refused.value.kind is kind, name
    root_key = authority.token.keys.pop("device-ca-root")
    with pytest.raises(DeviceCAError) as refused:                     # no root key: nobody would see it
        authority.revoke_issuing("issuing", "cACompromise", "cli:test")
    assert refused.value.kind is Kind.HSM_UNAVAILABLE and "nothing was changed" in refused.value.detail
    assert store.ca_certificates()["issuing"].status == "active" and authority.latest_crl() is None
    assert store.audit_head() == head
    authority.token.keys["device-ca-root"] = root_key
    authority.revoke_issuing("issuing", "superseded", "cli:test")
    with pytest.raises(DeviceCAError) as again:
        authority.revoke_issuing("issuing", "cACompromise", "cli:test")
    assert again.value.kind is Kind.CONFLICT
    assert len(x509.load_der_x509_crl(authority.latest_crl().der)) == 1


def test_the_janitor_signs_a_due_root_crl_at_start_and_every_rotation_round(pki, store, clock):
    authority, ra, publisher, *_ = pki
    janitor = Janitor(publisher, ra, store.leases, root=authority)
    janitor.prepare(wait=5)
    assert authority.latest_crl().number == 1
    store.revoke_ca("issuing", "keyCompromise", clock.now(), "test", crl_of="root")  # another process's revocation
    for _ in range(ROTATION_EVERY):
        janitor.run_once()
    latest = authority.latest_crl()
    assert latest.number == 2 and len(x509.load_der_x509_crl(latest.der)) == 1
    assert authority.crl_path.read_bytes() == latest.der


def test_migration_keeps_existing_crls_and_numbers_them_per_ca(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0015")
        connection.exec_driver_sql("INSERT INTO crls (number, ca, this_update, next_update, entries, der) "
                                   "VALUES (7, 'issuing', '2026-01-01 00:00:00', '2026-01-02 00:00:00', 0, x'00')")
        command.upgrade(config, "head")
        connection.exec_driver_sql("INSERT INTO crls (number, ca, this_update, next_update, entries, der) "
                                   "VALUES (7, 'root', '2026-01-01 00:00:00', '2027-01-01 00:00:00', 0, x'00')")
        assert connection.exec_driver_sql("SELECT ca, number FROM crls ORDER BY ca").all() == \
            [("issuing", 7), ("root", 7)]
        with pytest.raises(sa.exc.IntegrityError):
            with connection.begin_nested():
                connection.exec_driver_sql("INSERT INTO crls (number, ca, this_update, next_update, entries, der) "
                                           "VALUES (7, 'root', '2026-01-01', '2027-01-01', 0, x'00')")
    engine.dispose()
