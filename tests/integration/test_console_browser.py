"""The web console in headless Chromium against a real `device-ca serve` on SoftHSM, each browser
holding an operator's client certificate (issued with `device-ca issue --policy admin --role ...`,
imported with pk12util, auto-selected): the overview shows what `device-ca list --json` counts; a
viewer is offered no change and a form posted anyway is refused (403) with nothing changed; an
operator revokes a device through the form and `openssl ocsp` hears "revoked" on its next request;
without a client certificate every page is refused. Screenshots of each page are saved under the
test's tmp_path/screenshots."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca.clock import SystemClock
from device_ca.web.console.csrf import Csrf, load_secret
from integration.browser import browsers  # noqa: F401 - the fixture
from integration.cli_harness import issue_operators, new_ca_env, openssl, openssl_csr

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLES = {"vera": "viewer", "otto": "operator", "sofia": "security-officer"}
DEVICES = ("lock-5", "lock-6", "lock-7", "lock-8")
STATES = ("good", "renewed", "revoked", "expired", "not-yet-valid")
DOCS_WINDOW = (1100, 800)           # the README's screenshots: one window, no larger
DOCS_MAX_BYTES = 150_000


@pytest.fixture(scope="module")
def console(tmp_path_factory, module_database_url, module_serve):
    tmp = tmp_path_factory.mktemp("console-browser")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    issue_operators(env, tmp, ROLES)
    for device in DEVICES:
        csr = openssl_csr(tmp, device, f"/O=BuildingCo/OU=door-lock/CN={device}")
        env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--out", str(tmp / f"{device}.pem"))
    env.run("revoke", serial_of(tmp, "lock-8"), "--reason", "superseded")
    server = module_serve(env, "--rate-limit", "0")
    return env, server, tmp


def serial_of(tmp: Path, name: str) -> str:
    return format(_leaf(tmp, name).serial_number, "036x")


def _leaf(tmp: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates((tmp / f"{name}.pem").read_bytes())[0]


def _origin(console) -> str:
    return f"https://127.0.0.1:{console[1].port}"


def _browser(console, browsers, who: str | None):  # noqa: F811
    env, server, tmp = console
    if who is None:
        return browsers(_origin(console), server.chain)
    return browsers(_origin(console), server.chain, tmp / f"{who}.pem", tmp / f"{who}.key")


def _state(env) -> tuple:
    """What a refused change must leave as it was: every certificate's status, the audit chain's length and head."""
    listing = json.loads(env.run("list", "--json").stdout)
    audit = json.loads(env.run("audit", "verify", "--json").stdout)
    return [(c["serial"], c["status"]) for c in listing], audit["events"], audit["head"]


def _ocsp(env, server, tmp: Path, name: str) -> str:
    """openssl's reading of the server's OCSP answer for ``name``'s certificate, verified against the root."""
    proc = openssl("ocsp", "-issuer", str(env.ca_dir / "issuing.pem"), "-cert", str(tmp / f"{name}.pem"), "-url",
                   f"{server.http}/ocsp", "-CAfile", str(env.ca_dir / "root.pem"), "-timeout", "10")
    assert proc.returncode == 0 and "Response verify OK" in proc.stderr, proc.stdout + proc.stderr
    return proc.stdout.split(": ", 1)[1].splitlines()[0].strip()


def _docs_copy(browser, name: str) -> Path:
    """The window as it is (DOCS_WINDOW), not the whole page: small enough for the README."""
    import base64

    browser.driver.set_window_size(*DOCS_WINDOW)
    shot = browser.driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    path = browser.screenshots / f"docs-{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size < DOCS_MAX_BYTES, (path, path.stat().st_size)
    return path


def _navigate(browser, element) -> None:
    """Click ``element`` (a link or a form's button) and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser.driver, 30).until(expected_conditions.staleness_of(page))
    WebDriverWait(browser.driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _state_of(row: dict, now: dt.datetime) -> str:
    """The overview's states (store/fleet.py), from what `device-ca list --json` prints."""
    if row["status"] == "revoked":
        return "revoked"
    if dt.datetime.fromisoformat(row["not_after"].replace("Z", "+00:00")) <= now:
        return "expired"
    if dt.datetime.fromisoformat(row["not_before"].replace("Z", "+00:00")) > now:
        return "not-yet-valid"
    return "renewed" if row["superseded_by"] else "good"


def test_the_overview_shows_what_the_cli_lists(console, browsers):  # noqa: F811
    from selenium.webdriver.common.by import By

    env, server, tmp = console
    browser = _browser(console, browsers, "vera")
    page = browser.open(f"{_origin(console)}/console/")
    browser.screenshot("overview")
    _docs_copy(browser, "console-overview")
    assert page.status == 200 and "Fleet overview" in page.text
    assert "CN=vera,OU=admin,O=BuildingCo" in page.text and "viewer" in page.text

    now = dt.datetime.now(dt.timezone.utc)
    expected: dict[str, dict[str, int]] = {}
    for row in json.loads(env.run("list", "--json").stdout):
        by_state = expected.setdefault(row["policy"], dict.fromkeys(STATES, 0))
        by_state[_state_of(row, now)] += 1
    assert expected["door-lock"]["revoked"] == 1 and expected["admin"]["good"] == 3

    def cell(policy: str, state: str) -> int:
        return int(browser.driver.find_element(
            By.CSS_SELECTOR, f'tr[data-policy="{policy}"] td[data-state="{state}"]').text)

    shown_policies = [r.get_attribute("data-policy") for r in
                      browser.driver.find_elements(By.CSS_SELECTOR, "table.counts tbody tr[data-policy]")]
    assert shown_policies == sorted(expected)
    for policy, by_state in expected.items():
        assert {state: cell(policy, state) for state in STATES} == by_state, policy
    for state in STATES:
        assert cell("", state) == sum(by_state[state] for by_state in expected.values())
    charts = browser.driver.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2 and all(c.size["width"] > 300 and c.size["height"] > 100 for c in charts)
    bars = browser.driver.find_elements(By.CSS_SELECTOR, "svg.revocations rect.bar")
    assert bars[-1].get_attribute("data-count") == "1"                # lock-8, revoked today
    header = browser.driver.find_element(By.CSS_SELECTOR, "header.top")
    assert header.value_of_css_property("background-color") == "rgba(29, 36, 48, 1)"   # the stylesheet loaded
    assert browser.console_messages() == []                          # no CSP violation, no failed load


def test_a_viewer_sees_no_revoke_button_and_is_refused_if_it_posts_anyway(console, browsers):  # noqa: F811
    from selenium.webdriver.common.by import By

    env, server, tmp = console
    serial = serial_of(tmp, "lock-5")
    page_url = f"{_origin(console)}/console/certificates/{serial}"
    revoke_url = f"{page_url}/revoke"
    vera = _browser(console, browsers, "vera")
    page = vera.open(page_url)
    vera.screenshot("certificate-as-viewer")
    assert page.status == 200 and "CN=lock-5,OU=door-lock,O=BuildingCo" in page.text
    assert vera.driver.find_elements(By.CSS_SELECTOR, "form, button, #revoke, select") == []
    assert "Revoke" not in page.text

    otto = _browser(console, browsers, "otto")
    assert otto.open(page_url).status == 200
    otto.screenshot("certificate-as-operator")
    ottos_token = otto.driver.find_element(By.NAME, "csrf_token").get_attribute("value")

    before = _state(env)
    stolen = vera.post(revoke_url, {"csrf_token": ottos_token, "reason": "superseded"})
    vera.screenshot("viewer-post-with-operators-token")
    assert stolen.status == 403 and "CSRF token" in stolen.text

    # a token the server made for the viewer's own certificate (with the node's key): the role refuses
    fingerprint = hashlib.sha256(_leaf(tmp, "vera").public_bytes(Encoding.DER)).hexdigest()
    own = Csrf(load_secret(env.home), SystemClock()).token(fingerprint)
    vera.open(page_url)
    for reason in ("superseded", "keyCompromise"):
        refused = vera.post(revoke_url, {"csrf_token": own, "reason": reason})
        assert refused.status == 403 and "role viewer may not certificate.revoke" in refused.text, refused
    vera.screenshot("viewer-post-refused-by-role")
    vera.open(f"{_origin(console)}/console/devices/lock-5")
    assert vera.driver.find_elements(By.CSS_SELECTOR, "form, button") == []
    refused = vera.post(f"{_origin(console)}/console/devices/lock-5/decommission", {"csrf_token": own})
    assert refused.status == 403
    assert _state(env) == before                                    # still good, no audit event
    assert _ocsp(env, server, tmp, "lock-5") == "good"


def test_an_operator_revokes_through_the_form_and_ocsp_says_revoked_at_once(console, browsers):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    env, server, tmp = console
    serial = serial_of(tmp, "lock-6")
    page_url = f"{_origin(console)}/console/certificates/{serial}"
    assert _ocsp(env, server, tmp, "lock-6") == "good"
    otto = _browser(console, browsers, "otto")
    page = otto.open(page_url)
    assert page.status == 200
    reasons = [o.get_attribute("value") for o in Select(otto.driver.find_element(By.ID, "reason")).options]
    assert "cessationOfOperation" in reasons and "keyCompromise" not in reasons       # an operator's role
    Select(otto.driver.find_element(By.ID, "reason")).select_by_value("cessationOfOperation")
    _navigate(otto, otto.driver.find_element(By.ID, "revoke"))
    assert otto.driver.find_element(By.ID, "ocsp-status").get_attribute("data-status") == "revoked"
    assert otto.driver.current_url == page_url                        # 303 back to the certificate
    otto.screenshot("certificate-revoked")
    assert "reason cessationOfOperation" in otto.text() and otto.driver.find_elements(By.ID, "revoke") == []
    assert _ocsp(env, server, tmp, "lock-6") == "revoked"

    shown = json.loads(env.run("show", serial, "--json").stdout)
    assert shown["status"] == "revoked" and shown["revocation_reason"] == "cessationOfOperation"
    history = [row.text for row in otto.driver.find_elements(By.CSS_SELECTOR, 'tr[data-action="certificate.revoked"]')]
    assert len(history) == 1 and f"operator:CN=otto,OU=admin,O=BuildingCo serial {serial_of(tmp, 'otto')}" in history[0]

    sofia = _browser(console, browsers, "sofia")
    sofia.open(f"{_origin(console)}/console/certificates/{serial_of(tmp, 'lock-7')}")
    assert "keyCompromise" in [o.get_attribute("value") for o in
                               Select(sofia.driver.find_element(By.ID, "reason")).options]

    # the device page: its certificates, and decommissioning through the form
    otto.open(f"{_origin(console)}/console/devices/lock-7")
    otto.screenshot("device")
    _navigate(otto, otto.driver.find_element(By.ID, "decommission"))
    assert otto.driver.find_element(By.ID, "device-status").get_attribute("data-status") == "decommissioned"
    otto.screenshot("device-decommissioned")
    assert _ocsp(env, server, tmp, "lock-7") == "revoked"


def test_the_search_pages_through_the_fleet_and_links_to_certificates(console, browsers):  # noqa: F811
    from selenium.webdriver.common.by import By

    env, server, tmp = console
    vera = _browser(console, browsers, "vera")
    page = vera.open(f"{_origin(console)}/console/certificates?limit=3")
    vera.screenshot("certificates")
    assert page.status == 200
    seen = []
    for _ in range(10):
        seen += [r.get_attribute("data-serial") for r in vera.driver.find_elements(By.CSS_SELECTOR, "tr[data-serial]")]
        following = vera.driver.find_elements(By.ID, "next-page")
        if not following:
            break
        _navigate(vera, following[0])
    assert seen == [c["serial"] for c in json.loads(env.run("list", "--json").stdout)]
    vera.open(f"{_origin(console)}/console/certificates")
    vera.driver.find_element(By.NAME, "device_id").send_keys("lock-5")
    _navigate(vera, vera.driver.find_element(By.CSS_SELECTOR, "form.filters button"))
    rows = vera.driver.find_elements(By.CSS_SELECTOR, "tr[data-serial]")
    assert [r.get_attribute("data-serial") for r in rows] == [serial_of(tmp, "lock-5")]
    _navigate(vera, rows[0].find_element(By.TAG_NAME, "a"))
    assert vera.driver.find_element(By.ID, "subject").text == "CN=lock-5,OU=door-lock,O=BuildingCo"
    chain = vera.driver.find_elements(By.CSS_SELECTOR, "ol.chain li")
    assert len(chain) == 3 and vera.driver.find_elements(By.CSS_SELECTOR, "#extensions tbody tr")
    _docs_copy(vera, "console-certificate")
    vera.open(f"{_origin(console)}/console/devices")
    vera.screenshot("devices")
    assert vera.console_messages() == []


def test_without_a_client_certificate_every_page_is_refused(console, browsers):  # noqa: F811
    env, server, tmp = console
    browser = _browser(console, browsers, None)
    serial = serial_of(tmp, "lock-5")
    for path in ("/console/", "/console/certificates", f"/console/certificates/{serial}", "/console/devices",
                 "/console/devices/lock-5"):
        page = browser.open(f"{_origin(console)}{path}")
        assert page.status == 401 and "client certificate is required" in page.text, (path, page)
        assert "lock-5" not in page.text and "Fleet overview" not in page.text
    browser.screenshot("without-certificate")
