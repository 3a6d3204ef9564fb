"""Health and metrics (on both listeners), and the CA certificates for AIA caIssuers."""
from __future__ import annotations

import logging

from cryptography.hazmat.primitives.serialization import Encoding
from flask import Blueprint, Response, current_app, jsonify

from device_ca.errors import DeviceCAError
from device_ca.web.errors import text

log = logging.getLogger("device_ca.web.ops")

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Only ``ok`` (200) or ``unavailable`` (503) to anyone who asks: what failed, and why, goes to
    the log (and ``device-ca health`` shows it to the operator), never to the network."""
    healthy = True
    for name, check in current_app.config["DEVICE_CA_HEALTH"].items():       # database, hsm
        try:
            check()
        except DeviceCAError as exc:
            healthy = False
            log.error("health: %s unavailable: %s", name, exc.detail)
    return jsonify(status="ok" if healthy else "unavailable"), (200 if healthy else 503)


@bp.get("/metrics")
def metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    from device_ca.web.metrics import Scrape

    scrape = current_app.config.get("DEVICE_CA_SCRAPE") or Scrape()
    return Response(scrape.exposition(), content_type=CONTENT_TYPE_LATEST)


@bp.get("/ca/<name>.crt")
def ca_certificate(name: str) -> Response:
    certs = current_app.config["DEVICE_CA_CA_CERTIFICATES"]()
    if name not in certs:
        return text(404, f"no CA named {name}")
    response = Response(certs[name].public_bytes(Encoding.DER), content_type="application/pkix-cert")
    response.headers["Cache-Control"] = "max-age=3600, public"
    return response
