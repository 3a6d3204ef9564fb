"""deploy/prometheus/alerts.yml: valid (promtool check rules), each alert fires when it should and
not otherwise (promtool test rules, alerts_test.yml), and names only metrics that device-ca exports,
so that renaming a metric cannot silently leave an alert that never fires."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from device_ca.ca.issuer import Issuer, PublicUrls
from device_ca.ca.lint import pkilint_gate
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.expiry import ExpiryJob
from device_ca.ra.publication import StatusPublisher
from device_ca.store import Store
from device_ca.web.metrics import Scrape, StateCollector
from helpers import CountingSigner, make_csr, software_ca
from test_publication import SoftwareToken

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian: prometheus) is not installed")


@needs_promtool
def test_promtool_checks_the_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES / "alerts.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_promtool_unit_tests_fire_and_stay_silent():
    done = subprocess.run([PROMTOOL, "test", "rules", str(RULES / "alerts_test.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {t["alertname"] for test in yaml.safe_load((RULES / "alerts_test.yml").read_text())["tests"]
              for t in test["alert_rule_test"]}
    assert tested == set(_alerts())                     # every alert has its test


def test_the_rules_name_only_metrics_device_ca_exports(tmp_path, policies, clock):
    exported = _exported(tmp_path, policies, clock)
    assert {"device_ca_issuances_total", "device_ca_ocsp_answers_total", "device_ca_crl_next_update_in_seconds",
            "device_ca_lease_holder", "device_ca_certificates_expired", "device_ca_expiry_lag_seconds"} <= exported
    used = {name for rule in _alerts().values()
            for name in re.findall(r"\bdevice_ca_[a-z0-9_]+", rule["expr"] + str(rule.get("annotations", "")))}
    assert used and used - exported == set()


def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def _exported(tmp_path, policies, clock) -> set[str]:
    """The sample names of a real scrape (counters moved once, a CRL and an outbox row in the database)."""
    from device_ca import metrics
    from device_ca.web import metrics as web_metrics  # noqa: F401 - its metrics are registered on import

    store = Store(f"sqlite:///{tmp_path / 'device-ca.db'}")
    try:
        ca = software_ca(clock)
        issuer = Issuer(ca[2], CountingSigner(ca[3]), clock, PublicUrls("http://127.0.0.1:8080"), pkilint_gate)
        RegistrationAuthority(store, policies, lambda: issuer, clock).issue("door-lock", make_csr("lock-1"),
                                                                             actor="test")
        publisher = StatusPublisher(store, lambda: issuer, SoftwareToken(), clock, tmp_path / "issuing.crl")
        publisher.ensure_responder()
        publisher.generate_crl()
        metrics.hsm_error("sign")
        metrics.database_error()
        text = Scrape(collectors=(StateCollector(store, clock, expiry=ExpiryJob(store, policies, clock)),)) \
            .exposition().decode()
    finally:
        store.db.dispose()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names |= {s.name for s in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
    return names
