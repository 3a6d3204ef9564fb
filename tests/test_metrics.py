"""What /metrics reports, against a real database (SQLite or PostgreSQL) with software keys: the
issuance, OCSP, token and database counters, the OCSP fold, and the gauges read at the scrape."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest
from cryptography import x509
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import hsm
from device_ca.ca.issuer import Issuer, PublicUrls
from device_ca.ca.lint import pkilint_gate
from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.publication import OCSP_VALIDITY, StatusPublisher
from device_ca.store import Store
from device_ca.token import CaToken
from device_ca.web.metrics import Fold, Scrape, StateCollector
from device_ca.web.status import StatusApp
from helpers import CountingSigner, make_csr, software_ca
from test_publication import SoftwareToken, _request


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(scrape: Scrape) -> dict[str, list]:
    """metric family name -> its samples, parsed from the text exposition as Prometheus would."""
    return {f.name: f.samples for f in text_string_to_metric_families(scrape.exposition().decode())}


def gauge(families: dict, metric: str, **labels) -> float | None:
    for sample in families.get(metric, []):
        if sample.name == metric and sample.labels == labels:
            return sample.value
    return None


@pytest.fixture
def node(store, policies, clock, tmp_path):
    ca = software_ca(clock)
    issuer = Issuer(ca[2], CountingSigner(ca[3]), clock, PublicUrls("http://127.0.0.1:8080"), pkilint_gate)
    ra = RegistrationAuthority(store, policies, lambda: issuer, clock)
    publisher = StatusPublisher(store, lambda: issuer, SoftwareToken(), clock, tmp_path / "issuing.crl")
    publisher.ensure_responder()
    return ra, publisher, ca[2]


def test_issuances_are_counted_by_policy_path_and_outcome(node):
    ra, _, _ = node
    labels = dict(policy="door-lock", path="cli")
    before = {r or o: value("device_ca_issuances_total", outcome=o, reason=r, **labels)
              for o, r in (("issued", ""), ("refused", "policy-rejected"), ("refused", "malformed"))}
    ra.issue("door-lock", make_csr("lock-901"), actor="test")
    with pytest.raises(DeviceCAError):
        ra.issue("door-lock", make_csr("lock-902", ou="not-a-door-lock"), actor="test")
    with pytest.raises(DeviceCAError):
        ra.issue("door-lock", b"not a CSR", actor="test")
    with pytest.raises(DeviceCAError):                          # no policy of that name: not counted at all
        ra.issue("no-such-policy", make_csr("lock-903"), actor="test")
    assert value("device_ca_issuances_total", outcome="issued", reason="", **labels) == before["issued"] + 1
    assert value("device_ca_issuances_total", outcome="refused", reason="policy-rejected", **labels) \
        == before["policy-rejected"] + 1
    assert value("device_ca_issuances_total", outcome="refused", reason="malformed", **labels) \
        == before["malformed"] + 1
    assert value("device_ca_issuances_total", policy="no-such-policy", path="cli", outcome="refused",
                 reason="not-found") == 0


def test_ocsp_answers_by_status_and_source_are_folded_into_the_counters(node, clock):
    ra, publisher, issuing = node
    good = x509.load_der_x509_certificate(ra.issue("door-lock", make_csr("lock-911"), actor="test").record.der)
    revoked = ra.issue("door-lock", make_csr("lock-912"), actor="test").record
    ra.revoke(revoked.serial, "keyCompromise", actor="test")
    while publisher.presign():
        pass
    status = StatusApp(publisher)
    fold = Fold(lambda: [publisher], status.tally)
    fold()
    before = {k: value("device_ca_ocsp_answers_total", status=k[0], source=k[1], ca="issuing")
              for k in (("good", "presigned"), ("good", "cached"), ("revoked", "presigned"),
                        ("malformedRequest", "unsigned"))}
    count_before = value("device_ca_ocsp_request_seconds_count")
    request = _request(good, issuing)
    for _ in range(3):
        assert status.handle("POST", "/ocsp", "/ocsp", request, "127.0.0.1")[0] == 200
    status.handle("POST", "/ocsp", "/ocsp", _request(x509.load_der_x509_certificate(revoked.der), issuing),
                  "127.0.0.1")
    status.handle("POST", "/ocsp", "/ocsp", b"\x30\x03junk", "127.0.0.1")
    assert value("device_ca_ocsp_answers_total", status="good", source="presigned", ca="issuing") == before[("good", "presigned")]
    fold()
    grown = {k: value("device_ca_ocsp_answers_total", status=k[0], source=k[1], ca="issuing") - v for k, v in before.items()}
    assert grown == {("good", "presigned"): 1, ("good", "cached"): 2, ("revoked", "presigned"): 1,
                     ("malformedRequest", "unsigned"): 1}
    assert value("device_ca_ocsp_request_seconds_count") == count_before + 5
    assert value("device_ca_ocsp_request_seconds_bucket", le="+Inf") == value("device_ca_ocsp_request_seconds_count")
    fold()                                                        # nothing new: nothing added
    assert value("device_ca_ocsp_request_seconds_count") == count_before + 5


def test_the_nonce_budget_refusals_are_counted(node):
    ra, publisher, issuing = node
    from device_ca.web.ratelimit import RateLimiter

    leaf = x509.load_der_x509_certificate(ra.issue("door-lock", make_csr("lock-921"), actor="test").record.der)
    status = StatusApp(publisher, live_budget=RateLimiter(1, burst=1, clock=lambda: 1000.0))
    fold = Fold(lambda: [publisher], status.tally)
    fold()
    before = value("device_ca_rate_limited_total", limit="ocsp_nonce")
    for nonce in (b"a" * 16, b"b" * 16, b"c" * 16):
        status.handle("POST", "/ocsp", "/ocsp", _request(leaf, issuing, nonce), "10.0.0.9")
    fold()
    assert value("device_ca_rate_limited_total", limit="ocsp_nonce") == before + 2


def test_the_scrape_reads_crl_outbox_presigning_and_leases_from_the_database(node, store, clock):
    ra, publisher, _ = node
    scrape = Scrape(collectors=(StateCollector(store, clock),))
    record = ra.issue("door-lock", make_csr("lock-931"), actor="test").record      # door-lock: a Keycloak row
    families = scraped(scrape)
    assert gauge(families, "device_ca_database_up") == 1
    assert not families["device_ca_crl_age_seconds"]                          # no CRL yet
    assert gauge(families, "device_ca_outbox_pending") == 1
    assert gauge(families, "device_ca_ocsp_presign_due", ca="issuing") == 1                     # the new certificate
    assert gauge(families, "device_ca_ocsp_presign_lag_seconds", ca="issuing") == 0             # due since now
    clock.advance(dt.timedelta(minutes=10))
    families = scraped(scrape)
    assert gauge(families, "device_ca_outbox_oldest_pending_age_seconds") == 600
    assert gauge(families, "device_ca_ocsp_presign_lag_seconds", ca="issuing") == 600
    assert gauge(families, "device_ca_outbox_failing") == 0 and families["device_ca_outbox_last_error_info"] == []

    while publisher.presign():
        pass
    publisher.generate_crl()
    entry = store.queue.pending("keycloak.")[0]
    store.queue.failed(entry.id, "KeycloakError: 503 from the admin API", clock.now())
    clock.advance(dt.timedelta(minutes=5))
    ra.revoke(record.serial, "keyCompromise", actor="test")
    clock.advance(dt.timedelta(seconds=20))
    assert store.leases.acquire("janitor", "node-a:123", clock.now(), dt.timedelta(seconds=30))
    assert store.leases.acquire("drain", "node-b:7", clock.now() - dt.timedelta(minutes=5),
                                dt.timedelta(seconds=30))                        # expired: no holder
    families = scraped(scrape)
    assert gauge(families, "device_ca_crl_number", ca="issuing") == 1
    assert gauge(families, "device_ca_crl_age_seconds", ca="issuing") == 320
    assert gauge(families, "device_ca_crl_next_update_in_seconds", ca="issuing") == 24 * 3600 - 320
    assert gauge(families, "device_ca_outbox_pending") == 2                       # + the disable
    assert gauge(families, "device_ca_outbox_failing") == 1
    assert gauge(families, "device_ca_outbox_last_error_info", error="KeycloakError: 503 from the admin API") == 1
    assert gauge(families, "device_ca_ocsp_presign_due", ca="issuing") == 1                     # revoked since it was signed
    assert gauge(families, "device_ca_ocsp_presign_lag_seconds", ca="issuing") == 20
    assert gauge(families, "device_ca_lease_holder", name="janitor", holder="node-a:123") == 1
    assert not [s for s in families["device_ca_lease_holder"] if s.labels["name"] == "drain"]

    while publisher.presign():
        pass
    clock.advance(OCSP_VALIDITY / 4 + dt.timedelta(minutes=1))                   # every answer ageing
    families = scraped(scrape)
    assert gauge(families, "device_ca_ocsp_presign_due", ca="issuing") == 1                     # the revoked one (not expired)
    assert gauge(families, "device_ca_ocsp_presign_lag_seconds", ca="issuing") == 60


def test_with_the_database_down_the_scrape_still_answers(clock):
    store = Store("postgresql+psycopg://device-ca@127.0.0.1:1/none?connect_timeout=2", migrate_schema=False)
    try:
        before = value("device_ca_database_errors_total")
        families = scraped(Scrape(collectors=(StateCollector(store, clock),)))
        assert gauge(families, "device_ca_database_up") == 0
        assert not families.get("device_ca_crl_age_seconds")
        assert value("device_ca_database_errors_total") == before + 1
    finally:
        store.db.dispose()


def test_token_errors_are_counted_by_operation(tmp_path):
    token = CaToken(lambda: hsm.TokenConfig(module=str(tmp_path / "missing.so"), token_label="x", pin="1"))
    before = value("device_ca_hsm_errors_total", operation="open")
    for _ in range(2):
        with pytest.raises(DeviceCAError) as info:
            token.ping()
        assert info.value.kind is Kind.HSM_UNAVAILABLE
    assert value("device_ca_hsm_errors_total", operation="open") == before + 2


def test_importing_device_ca_does_not_import_prometheus_client():
    """prometheus_client picks multiprocess mode when it is imported: `device-ca serve` must get to
    set PROMETHEUS_MULTIPROC_DIR first."""
    code = ("import sys, json, device_ca.cli.main, device_ca.web.app, device_ca.web.status, device_ca.web.server\n"
            "print(json.dumps('prometheus_client' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) is False
