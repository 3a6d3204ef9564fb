"""/metrics of a running `device-ca serve` (gunicorn workers in multiprocess mode): an enrollment
over EST, a refused one, an issuance and a revocation by the CLI, OCSP answers asked by openssl and
a rate-limit refusal all show in the scrape, with the gauges the database gives."""
from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration.cli_harness import new_ca_env, openssl, openssl_csr
from integration.est_pki import device_csr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_database_url, module_serve):
    tmp = tmp_path_factory.mktemp("metrics")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    return env, module_serve(env, "--rate-limit", "2"), tmp


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, as Prometheus would parse the page."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def get(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name, **labels) -> float:
    """The sum over the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_est_cli_ocsp_and_rate_limit_show_in_the_scrape(served):
    env, server, tmp = served
    before = scrape(server.http)
    est = dict(policy="door-lock", path="est")

    secret = env.run("token", "create", "--policy", "door-lock", "--device-id", "lock-41").stdout.decode().strip()
    _, body = device_csr(tmp, "lock-41", "/O=BuildingCo/OU=door-lock/CN=lock-41")
    args = ("-H", "Content-Type: application/pkcs10")
    assert server.curl("/door-lock/simpleenroll", *args, "-u", f"lock-41:{secret}", body=body)[0] == 200
    assert server.curl("/door-lock/simpleenroll", *args, "-u", f"lock-41:{secret}", body=body)[0] == 401  # used
    assert server.curl("/no-such-label/simpleenroll", *args, "-u", f"lock-41:{secret}", body=body)[0] == 404

    csr = openssl_csr(tmp, "lock-42", "/O=BuildingCo/OU=door-lock/CN=lock-42")
    cert = tmp / "lock-42.pem"
    serial = env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--out", str(cert)) \
        .stderr.decode().split("issued serial ")[1].split()[0]
    ocsp = ("-issuer", str(env.ca_dir / "issuing.pem"), "-cert", str(cert), "-url", f"{server.http}/ocsp",
            "-CAfile", str(env.ca_dir / "root.pem"), "-no_nonce")
    for _ in range(3):
        assert ": good" in openssl("ocsp", *ocsp).stdout
    env.run("revoke", serial, "--reason", "keyCompromise")
    for _ in range(2):
        assert ": revoked" in openssl("ocsp", *ocsp).stdout

    statuses = [server.curl("/cacerts")[0] for _ in range(12)]      # --rate-limit 2: a burst of 4
    assert 429 in statuses

    time.sleep(1.5)                          # every HTTP worker folds its OCSP counts each second
    after = scrape(server.http)
    grown = lambda name, **labels: get(after, name, **labels) - get(before, name, **labels)  # noqa: E731

    assert grown("device_ca_issuances_total", outcome="issued", reason="", **est) == 1
    assert grown("device_ca_issuances_total", outcome="refused", reason="unauthorized", **est) == 1
    assert not [k for k in after if k[0] == "device_ca_issuances_total" and ("policy", "no-such-label") in k[1]]
    assert grown("device_ca_issuances_total", policy="door-lock", path="cli", outcome="issued", reason="") == 1
    assert total(after, "device_ca_ocsp_answers_total", status="good") \
        - total(before, "device_ca_ocsp_answers_total", status="good") == 3
    assert total(after, "device_ca_ocsp_answers_total", status="revoked") \
        - total(before, "device_ca_ocsp_answers_total", status="revoked") == 2
    assert grown("device_ca_ocsp_request_seconds_count") == 5
    assert grown("device_ca_est_request_seconds_count", operation="simpleenroll", status="2xx") == 1
    assert grown("device_ca_rate_limited_total", limit="est") == statuses.count(429)

    assert get(after, "device_ca_database_up") == 1
    assert 0 < get(after, "device_ca_crl_next_update_in_seconds", ca="issuing") <= 24 * 3600
    assert 0 <= get(after, "device_ca_crl_age_seconds", ca="issuing") < 3600
    assert get(after, "device_ca_outbox_pending") >= 3      # Keycloak not configured: upsert x2, disable
    assert get(after, "device_ca_outbox_oldest_pending_age_seconds") > 0
    assert total(after, "device_ca_hsm_errors_total") == 0 and total(after, "device_ca_database_errors_total") == 0
