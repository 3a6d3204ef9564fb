"""Health and metrics (on both listeners), and the CA certificates for AIA caIssuers."""
from __future__ import annotations

import os

from cryptography.hazmat.primitives.serialization import Encoding
from flask import Blueprint, Response, current_app, jsonify

from device_ca.errors import DeviceCAError
from device_ca.web.errors import text

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    status = {}
    for name, check in current_app.config["DEVICE_CA_HEALTH"].items():       # database, hsm
        try:
            check()
            status[name] = "ok"
        except DeviceCAError as exc:
            status[name] = exc.detail
    healthy = all(v == "ok" for v in status.values())
    return jsonify(status=("ok" if healthy else "unavailable"), **status), (200 if healthy else 503)


@bp.get("/metrics")
def metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


@bp.get("/ca/<name>.crt")
def ca_certificate(name: str) -> Response:
    certs = current_app.config["DEVICE_CA_CA_CERTIFICATES"]()
    if name not in certs:
        return text(404, f"no CA named {name}")
    response = Response(certs[name].public_bytes(Encoding.DER), content_type="application/pkix-cert")
    response.headers["Cache-Control"] = "max-age=3600, public"
    return response
