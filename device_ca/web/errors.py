"""The one mapping from domain error kinds to HTTP (RFC 7030 §4.2.3, RFC 9110): plain text for EST,
problem details (RFC 9457, ``application/problem+json``) for the REST API under /api/."""
from __future__ import annotations

import json

from flask import Response

from device_ca.errors import DeviceCAError, Kind

STATUS = {
    Kind.MALFORMED: 400, Kind.POLICY_REJECTED: 403, Kind.UNAUTHORIZED: 401, Kind.FORBIDDEN: 403,
    Kind.NOT_FOUND: 404, Kind.CONFLICT: 409, Kind.PENDING: 202, Kind.HSM_UNAVAILABLE: 503,
    Kind.DB_UNAVAILABLE: 503, Kind.KEYCLOAK_UNAVAILABLE: 503, Kind.CA_UNAVAILABLE: 503, Kind.INTERNAL: 500,
}
RETRY_AFTER = {Kind.PENDING: "60", Kind.HSM_UNAVAILABLE: "30", Kind.DB_UNAVAILABLE: "30"}
PUBLIC_DETAIL = {Kind.INTERNAL: "internal error", Kind.HSM_UNAVAILABLE: "signing service unavailable",
                 Kind.DB_UNAVAILABLE: "database unavailable", Kind.CA_UNAVAILABLE: "no issuing CA available"}


def text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = Response(message.rstrip("\n") + "\n", status=status, mimetype="text/plain")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


PROBLEM = "application/problem+json"
PROBLEM_TYPE = "https://device-ca.invalid/problems/"         # + the kind (or the HTTP status' name)
TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
          409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type", 429: "Too Many Requests",
          500: "Internal Server Error", 503: "Service Unavailable", 202: "Accepted"}


def problem(status: int, detail: str, kind: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """An RFC 9457 problem details answer: type (the error kind), title, status and detail."""
    title = TITLES.get(status, "Error")
    body = {"type": PROBLEM_TYPE + (kind or title.lower().replace(" ", "-")), "title": title, "status": status,
            "detail": detail}
    response = Response(json.dumps(body) + "\n", status=status, mimetype=PROBLEM)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def error_response(exc: DeviceCAError, api: bool = False) -> Response:
    """``exc`` as EST's plain text, or as problem details when ``api`` (a request under /api/)."""
    headers = {}
    if exc.kind in RETRY_AFTER:
        headers["Retry-After"] = RETRY_AFTER[exc.kind]
    if exc.kind is Kind.UNAUTHORIZED and not api:
        headers["WWW-Authenticate"] = 'Basic realm="device-ca EST", charset="UTF-8"'
    detail = PUBLIC_DETAIL.get(exc.kind, exc.detail)
    if api:
        return problem(STATUS[exc.kind], detail, exc.kind.value, headers)
    return text(STATUS[exc.kind], detail, headers)
