"""The operators' REST API under /api/v1 (HTTPS, JSON; the batch API beside it is web/batches.py).

An operator authenticates with the client certificate of an operator (ra/operators.py), checked
against the database on every request; the role recorded with it decides what it may do
(``PERMISSIONS``). Listings are paged with an opaque cursor (``limit`` at most MAX_LIMIT, the
answer's ``next`` for the following page); errors are problem details (RFC 9457). Each change
calls the same ``ra`` function as the command line, with the operator as the audited actor. The
OpenAPI 3.1 document (web/openapi.py) is served at /api/v1/openapi.json.
"""
from __future__ import annotations

import json
import logging

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from flask import Blueprint, Response, current_app, jsonify, request

from device_ca.errors import DeviceCAError, Kind, malformed
from device_ca.keycloak import KeycloakError
from device_ca.policy import parse_duration
from device_ca.ra import operators as roles
from device_ca.ra import reports
from device_ca.ra.authority import check_reason, find_certificate
from device_ca.ra.operators import Operator
from device_ca.web.paging import cursor as _cursor, limit as _limit, page as _page, time_key as _time_key
from device_ca.web.ratelimit import limit_client
from device_ca.web.tls import client_certificate

log = logging.getLogger("device_ca.web.api")

bp = Blueprint("api", __name__, url_prefix="/api/v1")
bp.before_request(limit_client)

PENDING_STATES = ("pending", "approved", "rejected", "issued")


def _config(name: str):
    return current_app.config[f"DEVICE_CA_{name}"]


def operator(action: str) -> Operator:
    """The calling operator, if its role allows ``action``: 401 without a client certificate, 403
    for a certificate that is not a current operator's or a role that does not allow it."""
    certificate = client_certificate(request.environ, _config("PROXIES"))
    who = _config("OPERATORS").authenticate(certificate)
    who.authorize(action)
    return who


def _body() -> dict:
    """The request's JSON object (empty without a body); 400 for anything else."""
    data = request.get_data(cache=True)
    if not data.strip():
        return {}
    if (request.mimetype or "").lower() != "application/json":
        raise malformed("Content-Type must be application/json")
    try:
        body = json.loads(data)
    except ValueError:
        raise malformed("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise malformed("the body must be a JSON object")
    return body


def _string(body: dict, name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value:
        raise malformed(f"{name} must be a non-empty string")
    return value


# -- certificates ------------------------------------------------------------------------------

def _certificate(serial: str):
    return find_certificate(_config("STORE"), serial)


@bp.get("/certificates")
def certificates() -> Response:
    operator(roles.READ)
    status = request.args.get("status")
    if status not in (None, "good", "revoked"):
        raise malformed("status is good or revoked")
    limit = _limit()
    rows = _config("STORE").certificates(status=status, policy=request.args.get("policy"),
                                         device_id=request.args.get("device_id"), limit=limit + 1, after=_cursor())
    return _page(rows, limit, lambda r: _time_key(r.issued_at, r.serial), reports.certificate)


@bp.get("/certificates/<serial>")
def certificate(serial: str) -> Response:
    operator(roles.READ)
    return jsonify(reports.certificate_detail(_config("STORE"), _certificate(serial)))


@bp.get("/certificates/<serial>/pem")
def certificate_pem(serial: str) -> Response:
    operator(roles.READ)
    der = _certificate(serial).der
    return Response(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM), mimetype="application/x-pem-file")


@bp.get("/certificates/<serial>/der")
def certificate_der(serial: str) -> Response:
    operator(roles.READ)
    return Response(_certificate(serial).der, mimetype="application/pkix-cert")


@bp.post("/certificates/<serial>/revoke")
def revoke(serial: str) -> Response:
    who = operator(roles.REVOKE)
    reason = check_reason(_string(_body(), "reason", "unspecified"))
    record = _certificate(serial)
    for action in roles.revoke_actions(reason, _config("STORE").operator_role(record.serial) is not None):
        who.authorize(action)
    return jsonify(reports.certificate(_config("RA").revoke(record.serial, reason, actor=who.actor)))


# -- devices -----------------------------------------------------------------------------------

@bp.get("/devices/<device_id>")
def device(device_id: str) -> Response:
    operator(roles.READ)
    store = _config("STORE")
    history = store.certificates(device_id=device_id)
    if not history:
        raise DeviceCAError(Kind.NOT_FOUND, f"no device {device_id!r}")
    return jsonify({"device_id": device_id, "policy": history[-1].policy,
                    "status": "decommissioned" if store.retired_devices(device_id) else "active",
                    "certificates": [reports.certificate(r) for r in history]})


@bp.post("/devices/<device_id>/decommission")
def decommission(device_id: str) -> Response:
    who = operator(roles.DECOMMISSION)
    _body()
    store = _config("STORE")
    for action in roles.decommission_actions(store, store.certificates(device_id=device_id)):
        who.authorize(action)
    revoked = _config("RA").decommission(device_id, actor=who.actor)
    return jsonify({"device_id": device_id, "status": "decommissioned", "revoked": [r.serial for r in revoked]})


# -- bootstrap tokens --------------------------------------------------------------------------

@bp.post("/tokens")
def token_create() -> Response:
    who = operator(roles.TOKEN_CREATE)
    body = _body()
    policy, device_id = _string(body, "policy"), _string(body, "device_id")
    try:
        lifetime = parse_duration(_string(body, "ttl", "24h"))
    except ValueError as exc:
        raise malformed(f"ttl: {exc}") from None
    token = _config("EST").create_token(policy, device_id, lifetime, who.actor)
    response = jsonify({"id": token.id, "device_id": device_id, "policy": policy,
                        "expires_at": reports.iso(token.expires_at), "secret": token.secret})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"          # the secret is shown this once
    return response


@bp.get("/tokens")
def tokens() -> Response:
    operator(roles.READ)
    limit, now = _limit(), _config("CLOCK").now()
    rows = _config("STORE").enrollment.tokens(device_id=request.args.get("device_id"),
                                              policy=request.args.get("policy"), limit=limit + 1, after=_cursor())
    return _page(rows, limit, lambda t: _time_key(t.created_at, t.id), lambda t: reports.token(t, now))


@bp.post("/tokens/<token_id>/withdraw")
def token_withdraw(token_id: str) -> Response:
    who = operator(roles.TOKEN_WITHDRAW)
    _body()
    withdrawn = _config("EST").withdraw_token(token_id, who.actor)
    return jsonify(reports.token(withdrawn, _config("CLOCK").now()))


# -- pending requests --------------------------------------------------------------------------

@bp.get("/pending")
def pending() -> Response:
    operator(roles.READ)
    state = request.args.get("state", "pending")
    if state not in PENDING_STATES + ("all",):
        raise malformed(f"state is one of {', '.join(PENDING_STATES)} or all")
    limit = _limit()
    rows = _config("STORE").enrollment.pending(None if state == "all" else state, limit=limit + 1, after=_cursor())
    return _page(rows, limit, lambda r: _time_key(r.created_at, r.id), reports.pending)


def _decide(request_id: str, approve: bool) -> Response:
    who = operator(roles.PENDING_DECIDE)
    _body()
    return jsonify(reports.pending(_config("RA").decide_pending(request_id, approve, actor=who.actor)))


@bp.post("/pending/<request_id>/approve")
def approve(request_id: str) -> Response:
    return _decide(request_id, True)


@bp.post("/pending/<request_id>/reject")
def reject(request_id: str) -> Response:
    return _decide(request_id, False)


# -- policies, audit, Keycloak, health -----------------------------------------------------------

@bp.get("/policies")
def policies() -> Response:
    operator(roles.READ)
    return jsonify({"items": [reports.policy(p) for p in _config("POLICIES")], "next": None})


@bp.get("/policies/<name>")
def policy(name: str) -> Response:
    operator(roles.READ)
    return jsonify(reports.policy(_config("POLICIES").get(name)))


@bp.get("/audit")
def audit() -> Response:
    operator(roles.READ)
    limit, after = _limit(), _cursor(sequence=True)
    events = _config("STORE").audit_feed.events(after or 0, limit + 1)
    return _page(events, limit, lambda e: e.seq, lambda e: {
        "seq": e.seq, "at": reports.iso(e.at), "action": e.action, "actor": e.actor, "serial": e.serial,
        "device_id": e.device_id, "details": json.loads(e.details), "prev_hash": e.prev_hash, "hash": e.hash})


@bp.get("/audit/verify")
def audit_verify() -> Response:
    operator(roles.READ)
    return jsonify(reports.verify_audit(_config("STORE"), _config("CHECKPOINTS")))


@bp.get("/keycloak/status")
def keycloak_status() -> Response:
    operator(roles.READ)
    return jsonify(reports.keycloak_status(_config("STORE"), _config("KEYCLOAK_URL")))


@bp.get("/keycloak/diff")
def keycloak_diff() -> Response:
    """What ``keycloak sync --dry-run`` would change; nothing is changed."""
    operator(roles.READ)
    try:
        report = _config("KEYCLOAK")().sync(dry_run=True)
    except KeycloakError as exc:
        error = reports.keycloak_error(exc)
        if error.kind in (Kind.UNAUTHORIZED, Kind.FORBIDDEN):   # device-ca's Keycloak credentials, not the caller's
            raise DeviceCAError(Kind.KEYCLOAK_UNAVAILABLE, f"Keycloak refused device-ca's admin credentials: "
                                f"{exc}") from None
        raise error from None
    return jsonify({"dry_run": True, **reports.keycloak_changes(report, request.args.get("all") == "true")})


@bp.get("/health")
def health() -> Response:
    """What ``/healthz`` keeps to the log: each check's state, for an operator."""
    operator(roles.READ)
    checks = {}
    for name, check in current_app.config["DEVICE_CA_HEALTH"].items():
        try:
            check()
            checks[name] = "ok"
        except DeviceCAError as exc:
            checks[name] = "unavailable"
            log.error("health: %s unavailable: %s", name, exc.detail)
    healthy = all(state == "ok" for state in checks.values())
    return jsonify({"status": "ok" if healthy else "unavailable", "checks": checks}), 200 if healthy else 503


@bp.get("/openapi.json")
def openapi() -> Response:
    from device_ca.web.openapi import DOCUMENT

    return jsonify(DOCUMENT)
