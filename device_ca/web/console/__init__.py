"""The operators' web console under /console/ on the HTTPS listener: server-rendered pages (Jinja
templates, one stylesheet, no script), every response with the headers of console/headers.py, every
POST checked for its CSRF token (console/csrf.py).

Who is calling is not decided here: ``operator_of(request)`` is given by the composition root (the
client-certificate authentication of the REST API's operators, ra/operators.py) and either returns
the caller, an ``Operator`` (fingerprint, subject, role, actor; ``may``/``authorize`` an action), or
raises DeviceCAError UNAUTHORIZED / FORBIDDEN. The composition root (web/app.py) mounts it on the
HTTPS app:

    register_console(app, Console(operator_of=..., csrf=Csrf(load_secret(state_dir), clock),
                                  overview=lambda: read_overview(store, clock), store=store, ra=ra,
                                  cas=lambda: [every CA certificate this CA knows]))

The certificate and device pages are console/certificates.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from cryptography import x509
from flask import Blueprint, Flask, Request, Response, current_app, g, render_template, request
from markupsafe import Markup

from device_ca.errors import DeviceCAError
from device_ca.web.console.certificates import add_certificate_pages
from device_ca.web.console.charts import expiry_histogram, revocations_chart
from device_ca.web.console.csrf import Csrf
from device_ca.web.console.headers import secure
from device_ca.web.console.operations import NAV as OPERATIONS_NAV, add_operations
from device_ca.web.errors import PUBLIC_DETAIL, RETRY_AFTER, STATUS

HERE = Path(__file__).resolve().parent
CONFIG = "DEVICE_CA_CONSOLE"
STATE_LABELS = {"good": "good", "renewed": "renewed", "revoked": "revoked", "expired": "expired",
                "not-yet-valid": "not yet valid"}
NAV = (("console.overview", "Overview"), ("console.certificates", "Certificates"),
       ("console.devices", "Devices")) + OPERATIONS_NAV


class Operator(Protocol):
    fingerprint: str
    subject: str
    role: str
    actor: str

    def may(self, action: str) -> bool: ...

    def authorize(self, action: str) -> None: ...


class Console:
    """What the console's views use, given by the composition root."""

    def __init__(self, *, operator_of: Callable[[Request], Operator], csrf: Csrf, overview: Callable[[], object],
                 store=None, ra=None, cas: Callable[[], list[x509.Certificate]] = list, clock=None,
                 checkpoints=None, keycloak_url: str | None = None):
        self.operator_of = operator_of
        self.csrf = csrf
        self.overview = overview            # () -> ra.overview.Overview
        self.store = store                  # store.Store: certificates, their status and history
        self.ra = ra                        # ra.authority.RegistrationAuthority: revoke, decommission, decide
        self.cas = cas                      # the CA certificates a chain is built from
        self.clock = clock
        self.checkpoints = checkpoints      # ra.checkpoints.AuditCheckpoints: audit verify
        self.keycloak_url = keycloak_url    # None: Keycloak not configured


def create_blueprint() -> Blueprint:
    bp = Blueprint("console", __name__, url_prefix="/console", template_folder=str(HERE / "templates"),
                   static_folder=str(HERE / "static"), static_url_path="/static")

    @bp.before_request
    def _operator() -> None:
        console = _console()
        g.operator = console.operator_of(request)
        if request.method == "POST":
            console.csrf.check(g.operator.fingerprint, request.form.get("csrf_token"))

    @bp.after_request
    def _headers(response: Response) -> Response:
        return secure(response)

    @bp.errorhandler(DeviceCAError)
    def _refused(exc: DeviceCAError) -> tuple[str, int, dict]:
        status = STATUS[exc.kind]
        headers = {"Retry-After": RETRY_AFTER[exc.kind]} if exc.kind in RETRY_AFTER else {}
        return render_template("console/error.html", status=status,
                               message=PUBLIC_DETAIL.get(exc.kind, exc.detail)), status, headers

    @bp.context_processor
    def _page() -> dict:
        operator = g.get("operator")
        return {"nav": NAV, "operator": operator,
                "csrf_token": (lambda: _console().csrf.token(operator.fingerprint)) if operator else None}

    @bp.get("/")
    def overview() -> str:
        found = _console().overview()
        first_day = found.revocations.edges[0].date()
        return render_template(
            "console/overview.html", overview=found, states=STATE_LABELS,
            expiry_chart=Markup(expiry_histogram(found.expiring.counts, found.expiring.edges)),
            revocations_chart=Markup(revocations_chart(found.revocations.counts, first_day)))

    add_certificate_pages(bp, _console)
    add_operations(bp)
    return bp


def _console() -> Console:
    return current_app.config[CONFIG]


def register_console(app: Flask, console: Console, blueprint: Blueprint | None = None) -> None:
    """Mount the console on ``app`` (the HTTPS application) under /console/."""
    app.config[CONFIG] = console
    app.register_blueprint(blueprint or create_blueprint())
