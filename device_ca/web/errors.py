"""The one mapping from domain error kinds to HTTP (RFC 7030 §4.2.3, RFC 9110)."""
from __future__ import annotations

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


def error_response(exc: DeviceCAError) -> Response:
    headers = {}
    if exc.kind in RETRY_AFTER:
        headers["Retry-After"] = RETRY_AFTER[exc.kind]
    if exc.kind is Kind.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Basic realm="device-ca EST", charset="UTF-8"'
    return text(STATUS[exc.kind], PUBLIC_DETAIL.get(exc.kind, exc.detail), headers)
