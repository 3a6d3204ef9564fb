"""The console blueprint (web/console/) mounted on a Flask app with the real overview of the database
under test and the real operators' authentication (ra/operators.Operators: certificates of policy
admin issued by the RA with a role): the overview page shows the fleet's counts and both charts,
every response carries the security headers, every POST needs a CSRF token made for the caller's
certificate; the certificate and device pages offer a change only to a role that may make it and
refuse it (403, nothing changed) to one that may not; a change goes through the RA with the
operator as the audited actor and answers 303 to the page it changed."""
from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from html.parser import HTMLParser

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Flask

from device_ca.ca.issuer import Issuer, PublicUrls
from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.authority import REASONS, RegistrationAuthority
from device_ca.ra.operators import Operators
from device_ca.ra.overview import read_overview
from device_ca.web.console import Console, register_console
from device_ca.web.console.csrf import Csrf
from device_ca.web.console.headers import CONTENT_SECURITY_POLICY
from device_ca.web.tls import ProxySettings, client_certificate
from helpers import make_csr, software_ca
from test_fleet import fleet  # noqa: F401 - the fixture

DAY = dt.timedelta(days=1)
ROLES = {"vera": "viewer", "otto": "operator", "sofia": "security-officer"}


@dataclass
class ConsoleUnderTest:
    app: Flask
    ra: RegistrationAuthority
    csrf: Csrf
    peers: dict[str, bytes]              # name -> DER of the client certificate (operators and a device)
    devices: dict[str, str]              # device id -> serial of a certificate issued by this test's CA

    def get(self, path: str, who: str | None = None, **kwargs):
        return self.app.test_client().get(path, environ_overrides=self._as(who), **kwargs)

    def post(self, path: str, who: str | None, data: dict):
        return self.app.test_client().post(path, data=data, environ_overrides=self._as(who))

    def token(self, who: str) -> str:
        return self.csrf.token(hashlib.sha256(self.peers[who]).hexdigest())

    def _as(self, who: str | None) -> dict:
        return {"device_ca.peer_der": self.peers[who]} if who else {}


@pytest.fixture
def console(store, policies, clock, fleet):  # noqa: F811
    """The console as web/app.py mounts it, on the fleet of test_fleet (at T0+42d), with operator
    certificates of every role and two door locks issued by this test's own CA."""
    ca = software_ca(clock)
    issuer = Issuer(ca[2], ca[3], clock, PublicUrls("http://127.0.0.1:8080"), None)
    ra = RegistrationAuthority(store, policies, lambda: issuer, clock)
    peers = {name: x509.load_pem_x509_certificate(
        ra.issue("admin", make_csr(name, ou="admin"), actor="cli:test", role=role).pem).public_bytes(Encoding.DER)
        for name, role in ROLES.items()}
    devices = {}
    for device in ("lock-100", "lock-101"):
        issued = ra.issue("door-lock", make_csr(device), actor="cli:test")
        devices[device] = issued.record.serial
        peers[device] = issued.record.der
    operators = Operators(store, policies, clock, lambda c: c.issuer == ca[2].subject)
    csrf = Csrf(b"k" * 32, clock)
    app = Flask("console-test")
    register_console(app, Console(
        operator_of=lambda request: operators.authenticate(client_certificate(request.environ, ProxySettings())),
        csrf=csrf, overview=lambda: read_overview(store, clock), store=store, ra=ra, cas=lambda: [ca[0], ca[2]]))
    return ConsoleUnderTest(app, ra, csrf, peers, devices)


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


def test_overview_renders_the_fleet(console):
    response = console.get("/console/", "vera")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = _Cells()
    page.feed(response.get_data(as_text=True))
    # the fleet's door locks, and this test's two (good) and its three operators (policy admin)
    assert page.cells[("door-lock", "good")] == "5" and page.cells[("door-lock", "renewed")] == "1"
    assert page.cells[("door-lock", "revoked")] == "2" and page.cells[("env-sensor", "good")] == "1"
    assert page.cells[("admin", "good")] == "3"
    assert page.cells[("", "good")] == "9" and page.cells[("", "expired")] == "0"
    assert page.svgs == 2
    html = response.get_data(as_text=True)
    assert "2 revocations" not in html and "1 revocation on" in html       # per day, two separate days
    assert 'id="pending-requests">0<' in html
    assert re.search(r'id="outbox-pending">[1-9]\d*<', html)
    assert "<script" not in html and "style=" not in html
    assert "CN=vera,OU=admin,O=BuildingCo" in html and ">viewer<" in html


def test_every_response_carries_the_security_headers(console):
    serial = console.devices["lock-100"]
    for response in (console.get("/console/", "vera"), console.get("/console/"),                     # refused
                     console.get("/console/static/console.css", "vera"),
                     console.get("/console/certificates", "vera"),
                     console.get(f"/console/certificates/{serial}", "otto"),
                     console.get("/console/devices/lock-100", "otto"),
                     console.post(f"/console/certificates/{serial}/revoke", "vera", {"reason": "superseded"})):
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
        assert "<script" not in response.get_data(as_text=True)
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY


def test_without_an_operators_certificate_the_console_refuses(console):
    for path in ("/console/", "/console/certificates", f"/console/certificates/{console.devices['lock-100']}",
                 "/console/devices", "/console/devices/lock-100"):
        response = console.get(path)
        assert response.status_code == 401 and "client certificate is required" in response.get_data(as_text=True)
        response = console.get(path, "lock-101")                          # a device's certificate
        assert response.status_code == 403 and "lock-100" not in response.get_data(as_text=True)


def _history(store, serial: str) -> list[tuple[str, str]]:
    return [(e.action, e.actor) for e in store.audit_feed.about(serial)]


def test_a_post_needs_a_csrf_token_made_for_the_callers_certificate(console, store):
    serial = console.devices["lock-100"]
    revoke = f"/console/certificates/{serial}/revoke"
    before = _history(store, serial)
    for token in (None, "1.00", console.token("sofia"), console.token("vera")):       # none, forged, others'
        data = {"reason": "superseded"} | ({"csrf_token": token} if token else {})
        response = console.post(revoke, "otto", data)
        assert response.status_code == 403 and "CSRF token" in response.get_data(as_text=True)
    assert console.post(revoke, None, {"reason": "superseded", "csrf_token": console.token("otto")}).status_code == 401
    assert store.certificate(serial).status == "good" and _history(store, serial) == before
    response = console.post(revoke, "otto", {"reason": "superseded", "csrf_token": console.token("otto")})
    assert response.status_code == 303 and response.headers["Location"].endswith(f"/console/certificates/{serial}")
    assert response.headers["X-Frame-Options"] == "DENY"
    assert store.certificate(serial).status == "revoked"


def _form(html: str) -> bool:
    return 'name="csrf_token"' in html


def test_a_viewer_is_shown_no_change_and_refused_one(console, store):
    serial = console.devices["lock-100"]
    page = console.get(f"/console/certificates/{serial}", "vera").get_data(as_text=True)
    assert "Revoke" not in page and not _form(page)
    page = console.get("/console/devices/lock-100", "vera").get_data(as_text=True)
    assert "Decommission" not in page and not _form(page)
    before = _history(store, serial)
    mine = console.token("vera")
    for reason in ("superseded", "keyCompromise"):
        refused = console.post(f"/console/certificates/{serial}/revoke", "vera", {"reason": reason, "csrf_token": mine})
        assert refused.status_code == 403 and "role viewer may not" in refused.get_data(as_text=True)
    refused = console.post("/console/devices/lock-100/decommission", "vera", {"csrf_token": mine})
    assert refused.status_code == 403
    assert store.certificate(serial).status == "good" and _history(store, serial) == before
    assert not store.retired_devices("lock-100")


def _reasons(html: str) -> list[str]:
    return re.findall(r'<option value="([A-Za-z]+)">', html.split('name="reason"', 1)[1].split("</select>")[0])


def test_the_reasons_offered_are_those_the_role_may_give(console, store):
    serial = console.devices["lock-100"]
    offered = _reasons(console.get(f"/console/certificates/{serial}", "otto").get_data(as_text=True))
    assert offered == [r for r in REASONS if r != "keyCompromise"]
    assert _reasons(console.get(f"/console/certificates/{serial}", "sofia").get_data(as_text=True)) == list(REASONS)
    refused = console.post(f"/console/certificates/{serial}/revoke", "otto",
                           {"reason": "keyCompromise", "csrf_token": console.token("otto")})
    assert refused.status_code == 403 and store.certificate(serial).status == "good"
    bad = console.post(f"/console/certificates/{serial}/revoke", "sofia", {"reason": "bored",
                                                                          "csrf_token": console.token("sofia")})
    assert bad.status_code == 400 and store.certificate(serial).status == "good"
    done = console.post(f"/console/certificates/{serial}/revoke", "sofia",
                        {"reason": "keyCompromise", "csrf_token": console.token("sofia")})
    assert done.status_code == 303
    page = console.get(done.headers["Location"], "otto").get_data(as_text=True)
    assert 'data-status="revoked"' in page and "reason keyCompromise" in page and not _form(page)
    sofia = store.certificate(_serial(console, "sofia"))
    assert _history(store, serial)[0] == ("certificate.revoked", f"operator:{sofia.subject} serial {sofia.serial}")
    again = console.post(f"/console/certificates/{serial}/revoke", "sofia",
                         {"reason": "superseded", "csrf_token": console.token("sofia")})
    assert again.status_code == 409


def _serial(console, who: str) -> str:
    return format(x509.load_der_x509_certificate(console.peers[who]).serial_number, "036x")


def test_only_a_security_officer_revokes_an_operators_certificate(console, store):
    """The API's rule (ra.operators.revoke_actions): an operator could otherwise lock others out."""
    vera = _serial(console, "vera")
    page = console.get(f"/console/certificates/{vera}", "otto").get_data(as_text=True)
    assert "operator role viewer" in page and not _form(page)
    page = console.get("/console/devices/vera", "otto").get_data(as_text=True)
    assert not _form(page)
    before = _history(store, vera)
    refused = console.post(f"/console/certificates/{vera}/revoke", "otto",
                           {"reason": "affiliationChanged", "csrf_token": console.token("otto")})
    assert refused.status_code == 403 and "may not operator.revoke" in refused.get_data(as_text=True)
    refused = console.post("/console/devices/vera/decommission", "otto", {"csrf_token": console.token("otto")})
    assert refused.status_code == 403 and not store.retired_devices("vera")
    assert store.certificate(vera).status == "good" and _history(store, vera) == before
    offered = _reasons(console.get(f"/console/certificates/{vera}", "sofia").get_data(as_text=True))
    assert "affiliationChanged" in offered
    done = console.post(f"/console/certificates/{vera}/revoke", "sofia",
                        {"reason": "affiliationChanged", "csrf_token": console.token("sofia")})
    assert done.status_code == 303 and store.certificate(vera).status == "revoked"
    assert console.get("/console/", "vera").status_code == 403                  # locked out at once


def test_the_certificate_page_shows_chain_extensions_status_and_history(console, store):
    serial = console.devices["lock-101"]
    response = console.get(f"/console/certificates/{serial}", "vera")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "CN=lock-101,OU=door-lock,O=BuildingCo" in page and 'data-status="good"' in page
    chain = page.split('<ol class="chain">', 1)[1].split("</ol>")[0]
    assert chain.count("<li>") == 3 and "not among this CA" not in page                # device, issuing, root
    for name in ("basicConstraints", "keyUsage", "extendedKeyUsage", "authorityKeyIdentifier", "clientAuth"):
        assert name in page
    assert 'data-action="certificate.issued"' in page and "cli:test" in page
    assert console.get(f"/console/certificates/{serial.upper()}", "vera").status_code == 301
    assert console.get("/console/certificates/0badc0de", "vera").status_code == 404
    assert console.get("/console/certificates/zz", "vera").status_code == 400
    # a certificate of another CA (the fleet's): its chain stops at the unknown issuer
    other = store.certificates(device_id="lock-5")[0].serial
    assert "not among this CA" in console.get(f"/console/certificates/{other}", "vera").get_data(as_text=True)


def _serials(html: str) -> list[str]:
    return re.findall(r'<tr data-serial="([0-9a-f]+)">', html)


def test_search_filters_and_pages_like_the_api(console, store):
    every = [r.serial for r in store.certificates()]
    seen, path = [], "/console/certificates?limit=3"
    for _ in range(20):
        page = console.get(path, "vera").get_data(as_text=True)
        assert len(_serials(page)) <= 3
        seen += _serials(page)
        following = re.search(r'<a href="([^"]+)" rel="next"', page)
        if following is None:
            break
        path = following.group(1).replace("&amp;", "&")
    assert seen == every
    revoked = console.get("/console/certificates?status=revoked&policy=door-lock", "vera").get_data(as_text=True)
    assert _serials(revoked) == [r.serial for r in store.certificates(status="revoked", policy="door-lock")]
    assert len(_serials(revoked)) == 2
    one = console.get("/console/certificates?device_id=lock-1", "vera").get_data(as_text=True)
    assert len(_serials(one)) == 2 and "(renewed)" in one
    assert console.get("/console/certificates?status=lost", "vera").status_code == 400
    assert console.get("/console/certificates?cursor=%25%25", "vera").status_code == 400


def test_an_operator_decommissions_a_device(console, store):
    page = console.get("/console/devices/lock-101", "otto").get_data(as_text=True)
    assert 'data-status="active"' in page and 'id="decommission"' in page
    assert console.get("/console/devices?device_id=lock-101", "vera").status_code == 303
    assert console.get("/console/devices/nobody", "vera").status_code == 404
    done = console.post("/console/devices/lock-101/decommission", "otto", {"csrf_token": console.token("otto")})
    assert done.status_code == 303 and done.headers["Location"].endswith("/console/devices/lock-101")
    assert store.retired_devices("lock-101") and store.certificate(console.devices["lock-101"]).status == "revoked"
    page = console.get("/console/devices/lock-101", "otto").get_data(as_text=True)
    assert 'data-status="decommissioned"' in page and "cessationOfOperation" in page and 'id="decommission"' not in page


def test_a_failure_below_is_a_page_with_the_headers_and_no_detail(console):
    def overview():
        raise DeviceCAError(Kind.DB_UNAVAILABLE, "connection to server at 10.1.2.3 refused")

    console.app.config["DEVICE_CA_CONSOLE"].overview = overview
    response = console.get("/console/", "vera")
    assert response.status_code == 503 and response.headers["Retry-After"] == "30"
    assert "database unavailable" in response.get_data(as_text=True)
    assert "10.1.2.3" not in response.get_data(as_text=True)
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
