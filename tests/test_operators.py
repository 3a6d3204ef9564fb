"""Operator certificates (policy admin) and their roles against a real database (SQLite or
PostgreSQL) with a software CA key: the role is recorded with the certificate, required for admin
certificates and refused for others (nothing stored either way); authentication reads the
certificate's state and role from the database on every call."""
from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from device_ca.ca.issuer import Issuer, PublicUrls
from device_ca.errors import DeviceCAError, Kind
from device_ca.ra import operators
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.issuance import check_method
from device_ca.ra.operators import PERMISSIONS, Operators, revoke_action
from helpers import make_csr, software_ca


@pytest.fixture
def ca(clock):
    return software_ca(clock)


@pytest.fixture
def ra(store, policies, ca, clock):
    issuer = Issuer(ca[2], ca[3], clock, PublicUrls("http://127.0.0.1:8080"), None)
    return RegistrationAuthority(store, policies, lambda: issuer, clock)


@pytest.fixture
def authority(store, policies, clock, ca):
    return Operators(store, policies, clock, lambda c: c.issuer == ca[2].subject)


def rows(store, table: str) -> int:
    with store.db.engine.connect() as c:
        return c.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar()


def _operator(ra, name: str, role: str):
    issued = ra.issue("admin", make_csr(name, ou="admin"), actor="cli:test", role=role)
    return x509.load_pem_x509_certificate(issued.pem)


def test_the_permission_table():
    assert PERMISSIONS["viewer"] == {"read"}
    assert PERMISSIONS["viewer"] < PERMISSIONS["operator"] < PERMISSIONS["security-officer"]
    assert "certificate.revoke" in PERMISSIONS["operator"]
    assert "certificate.revoke-key-compromise" not in PERMISSIONS["operator"]
    assert {"certificate.revoke-key-compromise", "key.block", "ca.rollover"} <= PERMISSIONS["security-officer"]
    assert "batch.submit" in PERMISSIONS["operator"] and "batch.submit" not in PERMISSIONS["viewer"]
    assert revoke_action("keyCompromise") == "certificate.revoke-key-compromise"
    assert revoke_action("cessationOfOperation") == "certificate.revoke"
    assert operators.revoke_actions("superseded", True) == ("certificate.revoke", "operator.revoke")
    assert [r for r, allowed in PERMISSIONS.items() if "operator.revoke" in allowed] == ["security-officer"]
    assert set(PERMISSIONS) == set(operators.ROLES)


def test_admin_certificates_are_issued_by_an_operator_only(policies):
    admin = policies.get("admin")
    assert "admin-api" in admin.authorizes and admin.enrollment == ("admin",)
    for method in ("bootstrap-token", "idevid", "bulk", "reenroll"):
        with pytest.raises(DeviceCAError) as refused:
            check_method(admin, method)
        assert refused.value.kind is Kind.FORBIDDEN


@pytest.mark.parametrize("policy, cn, ou, role, message", [
    ("admin", "alice", "admin", None, "issued with its role"),
    ("admin", "alice", "admin", "root", "unknown role"),
    ("door-lock", "lock-1", "door-lock", "viewer", "do not authorise the admin API"),
])
def test_role_required_for_operators_refused_for_others(ra, store, policy, cn, ou, role, message):
    before = {t: rows(store, t) for t in ("certificates", "serial_reservations", "audit_events", "operator_roles")}
    with pytest.raises(DeviceCAError) as refused:
        ra.issue(policy, make_csr(cn, ou=ou), actor="cli:test", role=role)
    assert refused.value.kind is Kind.MALFORMED and message in refused.value.detail
    assert {t: rows(store, t) for t in before} == before


def test_role_recorded_and_read_back_on_every_request(ra, store, authority, clock):
    certificate = _operator(ra, "alice", "operator")
    operator = authority.authenticate(certificate)
    assert operator.role == "operator" and operator.subject == "CN=alice,OU=admin,O=BuildingCo"
    assert operator.actor == f"operator:CN=alice,OU=admin,O=BuildingCo serial {operator.serial}"
    ra.revoke(operator.serial, "cessationOfOperation", actor="cli:test")
    with pytest.raises(DeviceCAError) as refused:
        authority.authenticate(certificate)
    assert refused.value.kind is Kind.FORBIDDEN


def test_who_is_not_an_operator(ra, authority, clock, ca):
    with pytest.raises(DeviceCAError) as refused:
        authority.authenticate(None)
    assert refused.value.kind is Kind.UNAUTHORIZED
    device = x509.load_pem_x509_certificate(ra.issue("door-lock", make_csr("lock-7"), actor="cli:test").pem)
    with pytest.raises(DeviceCAError) as refused:
        authority.authenticate(device)
    assert refused.value.kind is Kind.FORBIDDEN
    expired = _operator(ra, "bob", "security-officer")
    assert authority.authenticate(expired).role == "security-officer"
    clock.advance(dt.timedelta(days=91))
    with pytest.raises(DeviceCAError) as refused:
        authority.authenticate(expired)
    assert refused.value.kind is Kind.FORBIDDEN


def test_the_actor_fits_the_audit_log_and_keeps_the_serial():
    serial = "0194" + "ab" * 16
    long = operators.Operator(serial=serial, subject="CN=" + "x" * 300 + ",OU=admin,O=BuildingCo", role="viewer")
    assert len(long.actor) == operators.ACTOR_MAX and long.actor.endswith(f" serial {serial}")
    assert long.actor.startswith("operator:CN=xxx")
