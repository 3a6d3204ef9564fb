"""EST over HTTPS (RFC 7030 §3.2.2 paths, §4.1 cacerts, §4.2 enroll/re-enroll, §4.4 serverkeygen,
§4.5 csrattrs). A view decodes, calls one service, encodes; the label is resolved to a policy once.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import UnsupportedMediaType

from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.enrollment import Caller
from device_ca.web import est_codec
from device_ca.web.bodies import read_body
from device_ca.web.ratelimit import limit_client
from device_ca.web.tls import client_certificate

bp = Blueprint("est", __name__, url_prefix="/.well-known/est")

PKCS7_CERTS = "application/pkcs7-mime; smime-type=certs-only"


def _est():
    return current_app.config["DEVICE_CA_EST"]


def _label(label: str | None) -> str:
    label = label or current_app.config.get("DEVICE_CA_DEFAULT_POLICY")
    if not label:
        raise DeviceCAError(Kind.NOT_FOUND, "no label in the path and no default policy configured")
    try:
        return current_app.config["DEVICE_CA_POLICIES"].get(label).name
    except DeviceCAError:
        raise DeviceCAError(Kind.NOT_FOUND, f"unknown label {label!r}") from None


bp.before_request(limit_client)


def _caller() -> Caller:
    auth = request.authorization
    basic = (auth.username or "", auth.password or "") if auth and auth.type == "basic" else None
    certificate = client_certificate(request.environ, current_app.config["DEVICE_CA_PROXIES"])
    return Caller(address=g.client, basic=basic, certificate=certificate)


def _csr_body() -> bytes:
    """The request's CSR (RFC 7030 §4.2.1): application/pkcs10, base64 DER."""
    if est_codec.media_type(request.content_type) != "application/pkcs10":
        raise UnsupportedMediaType("Content-Type must be application/pkcs10")
    return est_codec.decode_base64_body(read_body(est_codec.MAX_BODY))


def _certs_response(certificates) -> Response:
    response = Response(est_codec.certs_only_base64(certificates), status=200, content_type=PKCS7_CERTS)
    response.headers["Content-Transfer-Encoding"] = "base64"
    return response


@bp.get("/cacerts")
@bp.get("/<label>/cacerts")
def cacerts(label: str | None = None) -> Response:
    if label is not None:
        _label(label)
    certs = tuple(current_app.config["DEVICE_CA_CACERTS_LIST"]())    # read anew: a rollover, a revoked CA
    known = current_app.config.get("DEVICE_CA_CACERTS")
    if known is not None and known[0] == certs:
        body = known[1]
    else:
        body = est_codec.certs_only_base64(list(certs))
        current_app.config["DEVICE_CA_CACERTS"] = (certs, body)
    response = Response(body, status=200, content_type=PKCS7_CERTS)
    response.headers["Content-Transfer-Encoding"] = "base64"
    return response


@bp.get("/csrattrs")
@bp.get("/<label>/csrattrs")
def csrattrs(label: str | None = None) -> Response:
    policy = current_app.config["DEVICE_CA_POLICIES"].get(_label(label))
    response = Response(est_codec.csr_attributes_base64(policy.key_types), status=200,
                        content_type="application/csrattrs")
    response.headers["Content-Transfer-Encoding"] = "base64"
    return response


@bp.post("/simpleenroll")
@bp.post("/<label>/simpleenroll")
def simpleenroll(label: str | None = None) -> Response:
    issued = _est().enroll(_label(label), _csr_body(), _caller())
    return _certs_response([issued.record.der])


@bp.post("/simplereenroll")
@bp.post("/<label>/simplereenroll")
def simplereenroll(label: str | None = None) -> Response:
    issued = _est().reenroll(_label(label), _csr_body(), _caller())
    return _certs_response([issued.record.der])


@bp.post("/serverkeygen")
@bp.post("/<label>/serverkeygen")
def serverkeygen(label: str | None = None) -> Response:
    issued, pkcs8 = _est().serverkeygen(_label(label), _csr_body(), _caller())
    body, content_type = est_codec.serverkeygen_multipart(pkcs8, issued.certificate)
    return Response(body, status=200, content_type=content_type)

