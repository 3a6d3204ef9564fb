"""The console blueprint (web/console/) mounted on a Flask app with the real overview of the database
under test: the overview page shows the fleet's counts and both charts, every response carries the
security headers, every POST needs a CSRF token made for the caller's certificate.

The operators' authentication is another branch's work; until it lands, ``certificate_holder``
below stands in for it: the TLS peer certificate (as the front passes it, ``device_ca.peer_der``)
is the caller, role "operator"; none is UNAUTHORIZED."""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from html.parser import HTMLParser

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Flask

from device_ca.ca.clock import FixedClock
from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.overview import read_overview
from device_ca.web.console import Console, create_blueprint, register_console
from device_ca.web.console.csrf import Csrf
from device_ca.web.console.headers import CONTENT_SECURITY_POLICY
from device_ca.web.tls import ProxySettings, client_certificate
from helpers import T0, software_ca
from test_fleet import fleet  # noqa: F401 - the fixture

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Holder:
    fingerprint: str
    subject: str
    role: str


def certificate_holder(request) -> Holder:
    certificate = client_certificate(request.environ, ProxySettings())
    if certificate is None:
        raise DeviceCAError(Kind.UNAUTHORIZED, "an operator's client certificate is required")
    return Holder(certificate.fingerprint(hashes.SHA256()).hex(), certificate.subject.rfc4514_string(), "operator")


@pytest.fixture
def peers():
    """Two client certificates' DER (any certificate will do for the stand-in)."""
    root, _, issuing, _ = software_ca(FixedClock(T0))
    return root.public_bytes(Encoding.DER), issuing.public_bytes(Encoding.DER)


@pytest.fixture
def console_app(store, fleet):  # noqa: F811
    clock = FixedClock(T0 + 42 * DAY + dt.timedelta(hours=5))
    blueprint = create_blueprint()

    @blueprint.post("/echo")                       # a state-changing form of the tests' own
    def echo() -> str:
        return "changed"

    app = Flask("console-test")
    register_console(app, Console(operator_of=certificate_holder, csrf=Csrf(b"k" * 32, clock),
                                  overview=lambda: read_overview(store, clock)), blueprint)
    return app


class _Cells(HTMLParser):
    """(policy, state) -> text of the counts table, and the inline SVG elements."""

    def __init__(self):
        super().__init__()
        self.cells, self.svgs, self._at, self._policy = {}, 0, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-policy" in attrs:
            self._policy = attrs["data-policy"]
        if tag == "td" and "data-state" in attrs:
            self._at = (self._policy, attrs["data-state"])
        if tag == "svg":
            self.svgs += 1

    def handle_data(self, data):
        if self._at is not None:
            self.cells[self._at] = data.strip()
            self._at = None


def test_overview_renders_the_fleet(console_app, peers):
    response = console_app.test_client().get("/console/", environ_overrides={"device_ca.peer_der": peers[0]})
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = _Cells()
    page.feed(response.get_data(as_text=True))
    assert page.cells[("door-lock", "good")] == "3" and page.cells[("door-lock", "renewed")] == "1"
    assert page.cells[("door-lock", "revoked")] == "2" and page.cells[("env-sensor", "good")] == "1"
    assert page.cells[("", "good")] == "4" and page.cells[("", "expired")] == "0"
    assert page.svgs == 2
    html = response.get_data(as_text=True)
    assert "2 revocations" not in html and "1 revocation on" in html       # per day, two separate days
    assert 'id="pending-requests">0<' in html
    assert re.search(r'id="outbox-pending">[1-9]\d*<', html)
    assert "<script" not in html and "style=" not in html


def test_every_response_carries_the_security_headers(console_app, peers):
    client = console_app.test_client()
    for response in (client.get("/console/", environ_overrides={"device_ca.peer_der": peers[0]}),
                     client.get("/console/"),                                          # refused
                     client.get("/console/static/console.css", environ_overrides={"device_ca.peer_der": peers[0]})):
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY


def test_without_a_certificate_the_console_refuses(console_app):
    response = console_app.test_client().get("/console/")
    assert response.status_code == 401
    assert "client certificate is required" in response.get_data(as_text=True)


def _token(app, der) -> str:
    with app.test_request_context("/console/", environ_overrides={"device_ca.peer_der": der}):
        from flask import current_app, request

        return current_app.config["DEVICE_CA_CONSOLE"].csrf.token(certificate_holder(request).fingerprint)


def test_a_post_needs_a_csrf_token_made_for_the_callers_certificate(console_app, peers):
    client = console_app.test_client()
    mine, theirs = peers
    as_me = {"device_ca.peer_der": mine}
    assert client.post("/console/echo", environ_overrides=as_me).status_code == 403                     # none
    assert client.post("/console/echo", data={"csrf_token": "1.00"}, environ_overrides=as_me).status_code == 403
    stolen = _token(console_app, theirs)
    assert client.post("/console/echo", data={"csrf_token": stolen}, environ_overrides=as_me).status_code == 403
    good = _token(console_app, mine)
    response = client.post("/console/echo", data={"csrf_token": good}, environ_overrides=as_me)
    assert response.status_code == 200 and response.get_data(as_text=True) == "changed"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert client.post("/console/echo", data={"csrf_token": good}).status_code == 401          # no certificate


def test_a_failure_below_is_a_page_with_the_headers_and_no_detail(store, peers):
    def overview():
        raise DeviceCAError(Kind.DB_UNAVAILABLE, "connection to server at 10.1.2.3 refused")

    app = Flask("console-test")
    register_console(app, Console(operator_of=certificate_holder, csrf=Csrf(b"k" * 32, FixedClock(T0)),
                                  overview=overview))
    response = app.test_client().get("/console/", environ_overrides={"device_ca.peer_der": peers[0]})
    assert response.status_code == 503 and response.headers["Retry-After"] == "30"
    assert "database unavailable" in response.get_data(as_text=True)
    assert "10.1.2.3" not in response.get_data(as_text=True)
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
