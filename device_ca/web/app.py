"""Flask application factories: the HTTPS app (EST, the batch API) and the plain-HTTP app (CA
certificates, health, metrics; OCSP and CRL in front of it, web/status.py). Each gets the few
collaborators its views use, by name, from the composition root."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from cryptography import x509
from flask import Flask, Response, g, jsonify, request

from device_ca.errors import DeviceCAError
from device_ca.ra.operators import Operators
from device_ca.web import api, batches, ops
from device_ca.web import est as est_blueprint
from device_ca.web.errors import error_response, problem, text
from device_ca.web.est_codec import MAX_BODY
from device_ca.web.ratelimit import RateLimiter
from device_ca.web.tls import ProxySettings, client_certificate

log = logging.getLogger("device_ca.web")


def _base(name: str, ca_certificates: Callable[[], dict], health: dict[str, Callable[[], None]],
          scrape=None) -> Flask:
    app = Flask(name)
    app.config["DEVICE_CA_SCRAPE"] = scrape            # web/metrics.Scrape: what GET /metrics reports
    app.config["DEVICE_CA_CA_CERTIFICATES"] = ca_certificates
    app.config["DEVICE_CA_HEALTH"] = health
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    def _api() -> bool:
        return request.path.startswith("/api/")

    def _error(status: int, message: str) -> Response:
        return problem(status, message) if _api() else text(status, message)

    @app.errorhandler(DeviceCAError)
    def _domain_error(exc: DeviceCAError) -> Response:
        if exc.cause is not None:
            log.error("%s %s: %s (%r)", request.method, request.path, exc.detail, exc.cause)
        return error_response(exc, _api())

    @app.errorhandler(404)
    def _not_found(exc) -> Response:
        return _error(404, "not found")

    @app.errorhandler(405)
    def _method(exc) -> Response:
        response = _error(405, "method not allowed")
        if getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(415)
    def _media_type(exc) -> Response:
        return _error(415, exc.description or "unsupported media type")

    @app.errorhandler(413)
    def _too_large(exc) -> Response:
        return _error(413, f"request body larger than {request.max_content_length or MAX_BODY} bytes")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        if hasattr(exc, "code") and hasattr(exc, "get_response"):      # other HTTP errors from werkzeug
            return _error(exc.code, exc.name.lower())
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, "internal error")

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        from device_ca.web.metrics import EST_SECONDS, HTTP_REQUESTS, HTTP_SECONDS

        endpoint = request.endpoint or "unknown"
        took = time.perf_counter() - g.get("started", time.perf_counter())
        HTTP_REQUESTS.labels(endpoint, str(response.status_code)).inc()
        HTTP_SECONDS.labels(endpoint).observe(took)
        if request.blueprint == "est":
            EST_SECONDS.labels(endpoint.rpartition(".")[2], f"{response.status_code // 100}xx").observe(took)
        return response

    app.register_blueprint(ops.bp)
    return app


def create_app(*, est, policies, ca_certificates: Callable[[], dict], health: dict[str, Callable[[], None]],
               store, clock, bulk: Callable, batch_dir: Path, batch_queue, proxies: ProxySettings = ProxySettings(),
               rate_limit: float = 20.0, default_policy: str | None = None,
               limiter: RateLimiter | None = None, scrape=None,
               cacerts: Callable[[], list] | None = None, ra=None, checkpoints=None,
               keycloak: Callable | None = None, keycloak_url: str | None = None,
               console_secret: bytes | None = None) -> Flask:
    """The HTTPS application: EST under /.well-known/est, the batch API under /api/v1/batches, the
    operators' API beside it under /api/v1 (``ra``: the RegistrationAuthority its changes go through,
    ``checkpoints``: AuditCheckpoints for audit verify, ``keycloak()``: the Keycloak reconciler).
    ``bulk(policy, inputs, out_dir, **options)`` makes a batch run, ``batch_queue`` (BatchQueue)
    runs stored batches a bounded number at a time; ``limiter``: one shared with
    other workers (see ``RateLimiter``); otherwise this app gets its own at ``rate_limit``; ``scrape``
    (web/metrics.Scrape): what GET /metrics reports besides the counters. ``console_secret``: the
    key of the console's CSRF tokens (web/console/csrf.py); with it, the operators' web console is
    mounted under /console/, behind the same authentication as the API."""
    app = _base("device_ca.https", ca_certificates, health, scrape)
    app.config.update(DEVICE_CA_EST=est, DEVICE_CA_POLICIES=policies, DEVICE_CA_STORE=store, DEVICE_CA_CLOCK=clock,
                      DEVICE_CA_BULK=bulk, DEVICE_CA_BATCH_DIR=Path(batch_dir),
                      DEVICE_CA_BATCH_QUEUE=batch_queue)
    app.config["DEVICE_CA_PROXIES"] = proxies
    app.config["DEVICE_CA_RATE_LIMITER"] = limiter or RateLimiter(rate_limit)
    app.config["DEVICE_CA_DEFAULT_POLICY"] = default_policy
    # what cacerts serves (issuing CAs still valid, newest first, then the root); by default the
    # issuing CA and the root of ca_certificates
    app.config["DEVICE_CA_CACERTS_LIST"] = cacerts or (lambda: [ca_certificates()[n] for n in ("issuing", "root")])
    app.config.update(DEVICE_CA_RA=ra, DEVICE_CA_CHECKPOINTS=checkpoints, DEVICE_CA_KEYCLOAK=keycloak,
                      DEVICE_CA_KEYCLOAK_URL=keycloak_url,
                      DEVICE_CA_OPERATORS=Operators(store, policies, clock, est.is_ours))
    app.register_blueprint(est_blueprint.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(api.bp)
    if console_secret is not None:
        from device_ca.ra.overview import read_overview
        from device_ca.web.console import Console, register_console
        from device_ca.web.console.csrf import Csrf

        operators = app.config["DEVICE_CA_OPERATORS"]
        register_console(app, Console(
            operator_of=lambda request: operators.authenticate(client_certificate(request.environ, proxies)),
            csrf=Csrf(console_secret, clock), overview=lambda: read_overview(store, clock), store=store, ra=ra,
            cas=lambda: [x509.load_der_x509_certificate(r.der) for r in store.ca_certificates().values()],
            clock=clock, checkpoints=checkpoints, keycloak_url=keycloak_url))
    return app


def create_public_app(*, ca_certificates: Callable[[], dict], health: dict[str, Callable[[], None]],
                      audit_checkpoint: Callable[[], dict | None] = lambda: None, scrape=None) -> Flask:
    """The plain-HTTP application for relying parties: CA certificates, health, metrics, and the
    newest signed audit checkpoint (``audit_checkpoint``: AuditCheckpoints.newest)."""
    app = _base("device_ca.http", ca_certificates, health, scrape)

    @app.get("/audit/checkpoint")
    def _checkpoint() -> Response:
        newest = audit_checkpoint()
        if newest is None:
            return text(404, "no audit checkpoint yet")
        response = jsonify(newest)
        response.headers["Cache-Control"] = "no-cache"
        return response

    return app
