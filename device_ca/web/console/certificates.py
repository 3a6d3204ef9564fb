"""The console's certificate and device pages: search (the filters and cursor of the REST API's
listing), a certificate's detail (RFC 5280 fields, its chain and extensions, its status as the OCSP
responder reads it, its audit history), revoking it (RFC 5280 §5.3.1 reasons) and decommissioning
a device.

A change goes through the same ``ra`` function as the REST API, audited as ``operator.actor``, and
the role is checked here on the server whatever the page offered, by the API's rules
(``ra.operators.revoke_actions``: only a security officer revokes an operator's certificate): a
page leaves out what the role may not do, a POST that asks anyway is refused (403) before anything
changes. A change answers 303 to the page it changed (POST/redirect/GET: a reload does not post
again).
"""
from __future__ import annotations

from cryptography import x509
from flask import Blueprint, Response, g, redirect, render_template, request, url_for

from device_ca.errors import DeviceCAError, Kind, malformed
from device_ca.ra import operators as roles
from device_ca.ra.authority import REASONS, check_reason, find_certificate
from device_ca.web.console import describe
from device_ca.web.paging import cursor, limit, split, time_key

STATUSES = ("good", "revoked")
HISTORY = 100


def reasons_for(operator, operator_certificate: bool) -> list[str]:
    """The revocation reasons the operator's role may give for a certificate (an operator's own
    certificate when ``operator_certificate``): none without the right to revoke it."""
    return [reason for reason in REASONS
            if all(operator.may(action) for action in roles.revoke_actions(reason, operator_certificate))]


def add_certificate_pages(bp: Blueprint, console) -> None:
    """The pages on ``bp``; ``console()`` is the Console of the running app."""

    def _record(serial: str):
        return find_certificate(console().store, serial)

    @bp.get("/certificates")
    def certificates() -> str:
        g.operator.authorize(roles.READ)
        status = request.args.get("status") or None
        if status not in (None, *STATUSES):
            raise malformed("status is good or revoked")
        filters = {"policy": request.args.get("policy", "").strip() or None, "status": status,
                   "device_id": request.args.get("device_id", "").strip() or None}
        size = limit()
        rows, following = split(console().store.certificates(**filters, limit=size + 1, after=cursor()), size,
                                lambda r: time_key(r.issued_at, r.serial))
        shown = {k: v for k, v in filters.items() if v}
        return render_template("console/certificates.html", rows=rows, filters=filters, statuses=STATUSES,
                               next_url=url_for("console.certificates", **shown, limit=size, cursor=following)
                               if following else None,
                               first_url=url_for("console.certificates", **shown, limit=size)
                               if request.args.get("cursor") else None)

    @bp.get("/certificates/<serial>")
    def certificate(serial: str) -> str | Response:
        g.operator.authorize(roles.READ)
        record = _record(serial)
        if record.serial != serial:
            return redirect(url_for("console.certificate", serial=record.serial), 301)
        found = console()
        parsed = x509.load_der_x509_certificate(record.der)
        path = describe.chain(parsed, found.cas())
        store = found.store
        role = store.operator_role(record.serial)
        return render_template(
            "console/certificate.html", record=record, certificate=parsed, chain=path[1:],
            complete=path[-1].issuer == path[-1].subject, extensions=describe.extensions(parsed),
            ocsp=store.status.status(record.serial), history=store.audit_feed.about(record.serial, HISTORY),
            role=role, reasons=reasons_for(g.operator, role is not None) if record.status == "good" else [])

    @bp.post("/certificates/<serial>/revoke")
    def revoke(serial: str) -> Response:
        g.operator.authorize(roles.REVOKE)
        reason = check_reason(request.form.get("reason", ""))
        record = _record(serial)
        for action in roles.revoke_actions(reason, console().store.operator_role(record.serial) is not None):
            g.operator.authorize(action)
        record = console().ra.revoke(record.serial, reason, actor=g.operator.actor)
        return redirect(url_for("console.certificate", serial=record.serial), 303)

    @bp.get("/devices")
    def devices() -> str | Response:
        g.operator.authorize(roles.READ)
        device_id = request.args.get("device_id", "").strip()
        if device_id:
            return redirect(url_for("console.device", device_id=device_id), 303)
        return render_template("console/devices.html")

    @bp.get("/devices/<device_id>")
    def device(device_id: str) -> str:
        g.operator.authorize(roles.READ)
        store = console().store
        history = store.certificates(device_id=device_id)
        if not history:
            raise DeviceCAError(Kind.NOT_FOUND, f"no device {device_id!r}")
        retired = bool(store.retired_devices(device_id))
        needs = roles.decommission_actions(store, history)
        return render_template("console/device.html", device_id=device_id, certificates=history[::-1],
                               decommissioned=retired,
                               may_decommission=not retired and all(g.operator.may(a) for a in needs))

    @bp.post("/devices/<device_id>/decommission")
    def decommission(device_id: str) -> Response:
        g.operator.authorize(roles.DECOMMISSION)
        store = console().store
        for action in roles.decommission_actions(store, store.certificates(device_id=device_id)):
            g.operator.authorize(action)
        console().ra.decommission(device_id, actor=g.operator.actor)
        return redirect(url_for("console.device", device_id=device_id), 303)
