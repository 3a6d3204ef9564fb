"""The console's pages in headless Chromium: the overview of a real fleet (issued by the RA on the
database under test) with its stylesheet and both charts, under the strict CSP with no violation
reported; refused without a client certificate.

The console is not mounted on `device-ca serve` until the operators' authentication lands (another
branch). Until then it runs here on werkzeug's HTTPS server with a throw-away PKI, and the caller
is the certificate holder of test_console.py; once it is mounted, these checks move to a real
`device-ca serve` with an operator's certificate."""
from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flask import Flask
from werkzeug.serving import make_server

from device_ca.ca.clock import FixedClock
from device_ca.ra.overview import read_overview
from device_ca.web.console import Console, create_blueprint, register_console
from device_ca.web.console.csrf import Csrf
from helpers import T0
from integration.browser import browsers  # noqa: F401 - the fixture
from test_console import certificate_holder
from test_fleet import fleet  # noqa: F401 - the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DAY = dt.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "BuildingCo"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(subject, key, issuer, issuer_key, *, ca=False, san=None, eku=None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + DAY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                        critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def _pki(directory):
    """A root, a server certificate for 127.0.0.1 and an operator's client certificate, as PEM files."""
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("root", "server", "operator")}
    root = _certificate(_name("Console Test Root"), keys["root"], _name("Console Test Root"), keys["root"], ca=True)
    made = {"root": root,
            "server": _certificate(_name("127.0.0.1"), keys["server"], root.subject, keys["root"],
                                   san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
                                   eku=[ExtendedKeyUsageOID.SERVER_AUTH]),
            "operator": _certificate(_name("operator-ada"), keys["operator"], root.subject, keys["root"],
                                     eku=[ExtendedKeyUsageOID.CLIENT_AUTH])}
    paths = {}
    for name, certificate in made.items():
        paths[name] = directory / f"{name}.pem"
        paths[name].write_bytes(certificate.public_bytes(Encoding.PEM))
        paths[f"{name}.key"] = directory / f"{name}.key"
        paths[f"{name}.key"].write_bytes(keys[name].private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return paths


def _peer_der(app):
    """werkzeug's SSL_CLIENT_CERT (PEM) as the front passes it: environ["device_ca.peer_der"]."""
    def wsgi(environ, start_response):
        pem = environ.get("SSL_CLIENT_CERT")
        environ["device_ca.peer_der"] = ssl.PEM_cert_to_DER_cert(pem) if pem else None
        return app(environ, start_response)
    return wsgi


@pytest.fixture
def console_server(store, fleet, tmp_path):  # noqa: F811
    pki = _pki(tmp_path)
    clock = FixedClock(T0 + 42 * DAY + dt.timedelta(hours=5))
    app = Flask("console-browser-test")
    blueprint = create_blueprint()

    @blueprint.post("/echo")                       # a state-changing form of the tests' own
    def echo() -> str:
        return "changed"

    csrf = Csrf(b"k" * 32, clock)
    register_console(app, Console(operator_of=certificate_holder, csrf=csrf,
                                  overview=lambda: read_overview(store, clock)), blueprint)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server"], pki["server.key"])
    context.load_verify_locations(pki["root"])
    context.verify_mode = ssl.CERT_OPTIONAL
    server = make_server("127.0.0.1", 0, _peer_der(app), threaded=True, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}", pki, csrf
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_overview_in_the_browser(console_server, browsers):  # noqa: F811
    origin, pki, _ = console_server
    browser = browsers(origin, pki["root"], pki["operator"], pki["operator.key"])
    page = browser.open(f"{origin}/console/")
    browser.screenshot("console-overview")
    assert page.status == 200
    assert "Fleet overview" in page.text and "O=BuildingCo,CN=operator-ada" not in page.text
    assert "CN=operator-ada,O=BuildingCo" in page.text                 # who the console thinks is calling

    from selenium.webdriver.common.by import By

    def cell(policy, state):
        return browser.driver.find_element(
            By.CSS_SELECTOR, f'tr[data-policy="{policy}"] td[data-state="{state}"]').text
    assert (cell("door-lock", "good"), cell("door-lock", "renewed"), cell("door-lock", "revoked")) == ("3", "1", "2")
    assert cell("env-sensor", "good") == "1" and cell("", "good") == "4"
    charts = browser.driver.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2 and all(c.size["width"] > 300 and c.size["height"] > 100 for c in charts)
    revocation_bars = browser.driver.find_elements(By.CSS_SELECTOR, "svg.revocations rect.bar")
    assert [b.get_attribute("data-count") for b in revocation_bars][-3:] == ["1", "0", "1"]
    # the stylesheet loaded under the CSP: the header is dark, the revocation bars red
    header = browser.driver.find_element(By.CSS_SELECTOR, "header.top")
    assert header.value_of_css_property("background-color") == "rgba(29, 36, 48, 1)"
    assert revocation_bars[-1].value_of_css_property("fill") == "rgb(180, 35, 24)"
    assert browser.console_messages() == []                          # no CSP violation, no failed load


def test_without_a_certificate_the_console_refuses(console_server, browsers):  # noqa: F811
    origin, pki, _ = console_server
    browser = browsers(origin, pki["root"])
    page = browser.open(f"{origin}/console/")
    browser.screenshot("console-without-certificate")
    assert page.status == 401
    assert "client certificate is required" in page.text and "Fleet overview" not in page.text


def test_a_form_posted_from_the_browser_needs_the_token(console_server, browsers):  # noqa: F811
    origin, pki, csrf = console_server
    browser = browsers(origin, pki["root"], pki["operator"], pki["operator.key"])
    browser.open(f"{origin}/console/")
    refused = browser.post(f"{origin}/console/echo", {"csrf_token": "0.00"})
    browser.screenshot("console-post-without-token")
    assert refused.status == 403 and "CSRF token" in refused.text
    fingerprint = x509.load_pem_x509_certificate(pki["operator"].read_bytes()).fingerprint(hashes.SHA256()).hex()
    browser.open(f"{origin}/console/")
    done = browser.post(f"{origin}/console/echo", {"csrf_token": csrf.token(fingerprint)})
    assert done.status == 200 and done.text == "changed"
