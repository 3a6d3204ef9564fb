"""OCSP (RFC 6960) for one issuing CA, in the lightweight profile of RFC 9919 (which obsoletes RFC 5019).

Requests are parsed with asn1crypto, which keeps every CertID of a requestList (cryptography's
``load_der_ocsp_request`` refuses more than one). Responses are signed by a delegated responder
certificate (EKU id-kp-OCSPSigning, id-pkix-ocsp-nocheck; RFC 6960 §4.2.2.2, RFC 9919 §3.2.2)
with responderID byKey, the SHA-1 of the responder's own public key.

Several CertIDs in one request. RFC 9919 §3.1.1 says "OCSPRequests that conform to this profile
MUST include only one Request in the OCSPRequest.RequestList structure" -- a rule for clients --
while §3.2.1 lets responses "include only one SingleResponse ... but MAY include additional
SingleResponse elements", and RFC 6960 §4.1.1/§4.2.1 define requestList and responses as
SEQUENCE OF. Nothing tells a responder to refuse a longer list, and ``openssl ocsp -cert a -cert b``
sends one, so such requests are answered (up to MAX_CERT_IDS) with one SingleResponse per CertID,
in request order. cryptography's OCSPResponseBuilder holds a single response, so a response with
several is assembled with asn1crypto and its ResponseData signed by the same signer; the one-CertID
case, the RFC 9919 profile, goes through OCSPResponseBuilder. Both are verified before they leave.

Nonce (RFC 8954, widened by RFC 9654 to SIZE(1..128)): echoed when present; an empty one or one
longer than 128 octets makes the request malformed.

Times: thisUpdate is the injected clock's now, nextUpdate thisUpdate + validity but never after the
responder certificate's notAfter, all in whole seconds (RFC 9919 §3.2.4). producedAt is the
injected clock's now for several CertIDs; for one, cryptography sets it from the system clock
(its builder takes no time), which in production is the same clock.

Signed requests and requestorName (RFC 9919 §3.1.2: responders "MUST handle such requests as if
the requestorName field were absent"; "Responders MAY ignore the signature") are answered as if
unsigned.

GET (RFC 9919 §6, RFC 6960 Appendix A.1): clients "MUST base64-encode the OCSPRequest structure
according to [RFC4648], section 4", "MUST NOT include whitespace or any other characters that are
not part of the base64 character repertoire" and "MUST properly URL-encode" it. So the path segment
is percent-decoded once (``+`` stays ``+``: this is a path, not a form) and then must be standard
base64 with its ``=`` padding: a missing pad, whitespace or the URL-safe alphabet is malformed.
Unencoded ``/`` and ``+`` are accepted, since they are base64 characters either way.

Section numbers of RFC 9919 follow the text of draft-ietf-lamps-rfc5019bis-12, which became it.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable, Literal
from urllib.parse import unquote_to_bytes

from asn1crypto import algos as asn1_algos
from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_ca.ca.clock import Clock
from device_ca.ca.crl import reason_flag, utc_seconds
from device_ca.ca.csr import hash_for_key_type, key_type_of, public_key_der
from device_ca.ca.issuer import BACKDATE, Linter, verify_signed_by
from device_ca.errors import DeviceCAError, Kind

MAX_CERT_IDS = 10
MAX_REQUEST_BYTES = 64 * 1024
MAX_GET_CHARS = 8 * 1024
NONCE_MIN, NONCE_MAX = 1, 128

# CertID hash algorithms answered: those cryptography's builder can echo.
HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(), "sha224": hashes.SHA224(), "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(), "sha512": hashes.SHA512(),
}

ERROR_STATUSES: dict[str, ocsp.OCSPResponseStatus] = {
    "malformedRequest": ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
    "internalError": ocsp.OCSPResponseStatus.INTERNAL_ERROR,
    "tryLater": ocsp.OCSPResponseStatus.TRY_LATER,
    "sigRequired": ocsp.OCSPResponseStatus.SIG_REQUIRED,
    "unauthorized": ocsp.OCSPResponseStatus.UNAUTHORIZED,
}


class MalformedRequest(DeviceCAError):
    def __init__(self, detail: str):
        super().__init__(Kind.MALFORMED, detail)


@dataclass(frozen=True)
class CertId:
    hash_algorithm: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int


@dataclass(frozen=True)
class ParsedRequest:
    cert_ids: tuple[CertId, ...]
    nonce: bytes | None
    plain: bool = True       # nothing but CertIDs and a nonce: no requestor name, signature or other extension


@dataclass(frozen=True)
class Status:
    kind: Literal["good", "revoked", "unknown"]
    revoked_at: dt.datetime | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("good", "revoked", "unknown"):
            raise ValueError(f"unknown certificate status {self.kind!r}")
        if (self.kind == "revoked") != (self.revoked_at is not None):
            raise ValueError("a revocation time goes with status revoked, and only with it")
        if self.reason is not None and self.kind != "revoked":
            raise ValueError("a revocation reason goes with status revoked only")


# --- requests -------------------------------------------------------------------------------

def parse_request(der: bytes) -> ParsedRequest:
    """The CertIDs and nonce of a DER OCSPRequest; MalformedRequest if it cannot be answered."""
    if not der:
        raise MalformedRequest("empty OCSP request")
    if len(der) > MAX_REQUEST_BYTES:
        raise MalformedRequest(f"OCSP request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        request = asn1_ocsp.OCSPRequest.load(bytes(der), strict=True)
        request.native  # decodes every field, so that garbage anywhere is found here
        tbs = request["tbs_request"]
        requests = list(tbs["request_list"])
        raw_ids = [(r["req_cert"]["hash_algorithm"]["algorithm"].native, r["req_cert"]["issuer_name_hash"].native,
                    r["req_cert"]["issuer_key_hash"].native, r["req_cert"]["serial_number"].native)
                   for r in requests]
        extensions = list(tbs["request_extensions"] or [])
        single_extensions = [e for r in requests for e in (r["single_request_extensions"] or [])]
        for e in extensions + single_extensions:       # RFC 6960 §4.4: unrecognised critical ones are refused
            if e["critical"].native and e["extn_id"].native != "nonce":
                raise MalformedRequest(f"OCSP request has a critical extension {e['extn_id'].dotted} this "
                                       "responder does not understand")
        nonces = [e["extn_value"] for e in extensions if e["extn_id"].native == "nonce"]
        nonce_values = [_nonce_value(n) for n in nonces]
        plain = len(extensions) == len(nonces) and not single_extensions \
            and tbs["requestor_name"].native is None and request["optional_signature"].native is None
    except MalformedRequest:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise MalformedRequest(f"not a DER OCSPRequest ({_short(exc)})") from None

    if not raw_ids:
        raise MalformedRequest("OCSP request has no CertID")
    if len(raw_ids) > MAX_CERT_IDS:
        raise MalformedRequest(f"OCSP request has {len(raw_ids)} CertIDs; at most {MAX_CERT_IDS} are answered")
    if len(nonce_values) > 1:
        raise MalformedRequest("OCSP request has more than one nonce extension")
    return ParsedRequest(cert_ids=tuple(_cert_id(*raw) for raw in raw_ids),
                         nonce=nonce_values[0] if nonce_values else None, plain=plain)


def _nonce_value(extn_value: asn1_core.ParsableOctetString) -> bytes:
    """RFC 8954 §2.1: extnValue holds Nonce ::= OCTET STRING, SIZE(1..128) since RFC 9654."""
    inner = extn_value.parsed
    if not isinstance(inner, asn1_core.OctetString) or inner.dump() != extn_value.contents:
        raise MalformedRequest("nonce extension does not hold exactly one OCTET STRING")
    value = inner.native
    if not NONCE_MIN <= len(value) <= NONCE_MAX:
        raise MalformedRequest(f"nonce of {len(value)} octets; RFC 9654 allows {NONCE_MIN}..{NONCE_MAX}")
    return value


def _cert_id(algorithm: str, name_hash: bytes, key_hash: bytes, serial: int) -> CertId:
    if algorithm not in HASHES:
        raise MalformedRequest(f"CertID hash algorithm {algorithm} is not supported")
    size = HASHES[algorithm].digest_size
    if len(name_hash) != size or len(key_hash) != size:
        raise MalformedRequest(f"CertID hashes are not {size} octets long as {algorithm} gives")
    if serial < 0:
        raise MalformedRequest("CertID serial number is negative")
    return CertId(algorithm, name_hash, key_hash, serial)


def parse_get_path(path_segment: str) -> bytes:
    """The DER request carried in ``GET /ocsp/<path_segment>`` (decisions in the module docstring)."""
    if not path_segment:
        raise MalformedRequest("empty OCSP GET request")
    if len(path_segment) > MAX_GET_CHARS:
        raise MalformedRequest(f"OCSP GET path longer than {MAX_GET_CHARS} characters")
    try:
        encoded = unquote_to_bytes(path_segment.encode("ascii"))
        return base64.b64decode(encoded, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise MalformedRequest(f"OCSP GET path is not URL-encoded padded base64 ({_short(exc)})") from None


# --- responses ------------------------------------------------------------------------------

def error_response(status: str) -> bytes:
    """An unsigned OCSPResponse without responseBytes (RFC 6960 §2.3)."""
    if status not in ERROR_STATUSES:
        raise ValueError(f"unknown OCSP error status {status!r}")
    return ocsp.OCSPResponseBuilder.build_unsuccessful(ERROR_STATUSES[status]).public_bytes(Encoding.DER)


def status_for_error(error: DeviceCAError) -> str:
    """The OCSPResponseStatus an edge sends for a domain error."""
    return {
        Kind.MALFORMED: "malformedRequest",
        Kind.UNAUTHORIZED: "unauthorized",
        Kind.FORBIDDEN: "unauthorized",
        Kind.NOT_FOUND: "unauthorized",
        Kind.HSM_UNAVAILABLE: "tryLater",
        Kind.DB_UNAVAILABLE: "tryLater",
    }.get(error.kind, "internalError")


def issuer_hashes(issuer_cert: x509.Certificate) -> dict[str, tuple[bytes, bytes]]:
    """(issuerNameHash, issuerKeyHash) by hash algorithm: how a CertID names ``issuer_cert`` (RFC 6960 §4.1.1)."""
    issuer = asn1_x509.Certificate.load(issuer_cert.public_bytes(Encoding.DER))
    name_der = issuer.subject.dump()
    key_bits = issuer.public_key["public_key"].contents[1:]
    return {name: (hashlib.new(name, name_der).digest(), hashlib.new(name, key_bits).digest()) for name in HASHES}


def names_issuer(cert_id: CertId, hashes: dict[str, tuple[bytes, bytes]]) -> bool:
    return hashes.get(cert_id.hash_algorithm) == (cert_id.issuer_name_hash, cert_id.issuer_key_hash)


class Responder:
    """Answers for one issuing CA with a delegated responder certificate (EKU OCSPSigning, ocsp-nocheck)."""

    def __init__(self, issuer_cert: x509.Certificate, responder_cert: x509.Certificate, responder_signer,
                 clock: Clock, validity: dt.timedelta = dt.timedelta(hours=24)):
        self.issuer_cert = issuer_cert
        self.responder_cert = responder_cert
        self.signer = responder_signer
        self.clock = clock
        self.validity = validity
        _check_responder(issuer_cert, responder_cert, responder_signer)
        self.hash = hash_for_key_type(key_type_of(responder_cert.public_key()))
        self._responder_der = responder_cert.public_bytes(Encoding.DER)
        self._issuer_hashes = issuer_hashes(issuer_cert)
        self._responder_key_id = hashlib.sha1(_key_bits(responder_cert)).digest()

    def matches(self, cert_id: CertId) -> bool:
        """Whether ``cert_id`` names this issuer (by name and key hash, in its own hash algorithm)."""
        return self._issuer_hashes.get(cert_id.hash_algorithm) == (cert_id.issuer_name_hash, cert_id.issuer_key_hash)

    def cert_id(self, serial: int, hash_algorithm: str = "sha1") -> CertId:
        """The CertID a relying party sends for ``serial`` of this issuer (SHA-1 by default, RFC 5019)."""
        name_hash, key_hash = self._issuer_hashes[hash_algorithm]
        return CertId(hash_algorithm, name_hash, key_hash, serial)

    def sign_response(self, cert_id: CertId, status: Status, nonce: bytes | None = None) -> bytes:
        """A successful DER OCSPResponse with one SingleResponse."""
        return self.sign_responses([(cert_id, status)], nonce)

    def sign_responses(self, answers: Iterable[tuple[CertId, Status]], nonce: bytes | None = None) -> bytes:
        """A successful DER OCSPResponse with one SingleResponse per (CertID, status), in order."""
        answers = list(answers)
        if not 1 <= len(answers) <= MAX_CERT_IDS:
            raise DeviceCAError(Kind.INTERNAL, f"an OCSP response holds 1..{MAX_CERT_IDS} answers")
        for cert_id, _ in answers:
            if not self.matches(cert_id):
                raise DeviceCAError(Kind.UNAUTHORIZED, "CertID names an issuer this responder does not serve")
        if nonce is not None and not NONCE_MIN <= len(nonce) <= NONCE_MAX:
            raise MalformedRequest(f"nonce of {len(nonce)} octets; RFC 9654 allows {NONCE_MIN}..{NONCE_MAX}")
        now = utc_seconds(self.clock.now())
        if not self.responder_cert.not_valid_before_utc <= now < self.responder_cert.not_valid_after_utc:
            raise DeviceCAError(Kind.INTERNAL, "the OCSP responder certificate is not valid now; rotate it")
        # A response must not outlive the certificate that vouches for its signature.
        next_update = min(now + self.validity, self.responder_cert.not_valid_after_utc)
        if len(answers) == 1:
            der = self._sign_one(answers[0], nonce, now, next_update)
        else:
            der = self._sign_many(answers, nonce, now, next_update)
        self._verify(der, len(answers))
        return der

    def _sign_one(self, answer: tuple[CertId, Status], nonce: bytes | None, now: dt.datetime,
                  next_update: dt.datetime) -> bytes:
        cert_id, status = answer
        revoked_at = utc_seconds(status.revoked_at) if status.revoked_at else None
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=cert_id.issuer_name_hash, issuer_key_hash=cert_id.issuer_key_hash,
                serial_number=cert_id.serial, algorithm=HASHES[cert_id.hash_algorithm],
                cert_status=_CERT_STATUS[status.kind], this_update=now, next_update=next_update,
                revocation_time=revoked_at,
                revocation_reason=reason_flag(status.reason or "unspecified") if revoked_at else None)
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.responder_cert)
            .certificates([self.responder_cert])
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        return builder.sign(self.signer, self.hash).public_bytes(Encoding.DER)

    def _sign_many(self, answers: list[tuple[CertId, Status]], nonce: bytes | None, now: dt.datetime,
                   next_update: dt.datetime) -> bytes:
        data = {
            "version": "v1",
            "responder_id": asn1_ocsp.ResponderId(name="by_key", value=self._responder_key_id),
            "produced_at": now,
            "responses": [_single_response(cert_id, status, now, next_update) for cert_id, status in answers],
        }
        if nonce is not None:
            data["response_extensions"] = [
                {"extn_id": "nonce", "critical": False, "extn_value": asn1_core.OctetString(nonce)}]
        tbs = asn1_ocsp.ResponseData(data)
        signature_algorithm, signature = self._sign_raw(tbs.dump())
        basic = asn1_ocsp.BasicOCSPResponse({
            "tbs_response_data": tbs,
            "signature_algorithm": signature_algorithm,
            "signature": signature,
            "certs": [asn1_x509.Certificate.load(self._responder_der)],
        })
        return asn1_ocsp.OCSPResponse({
            "response_status": "successful",
            "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
        }).dump()

    def _sign_raw(self, tbs: bytes) -> tuple[asn1_algos.SignedDigestAlgorithm, bytes]:
        """Sign as cryptography's builders would: ECDSA, or RSA PKCS #1 v1.5, with self.hash."""
        public_key = self.responder_cert.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            algorithm = asn1_algos.SignedDigestAlgorithm({"algorithm": f"{self.hash.name}_ecdsa"})
            return algorithm, self.signer.sign(tbs, ec.ECDSA(self.hash))
        if isinstance(public_key, rsa.RSAPublicKey):
            algorithm = asn1_algos.SignedDigestAlgorithm({"algorithm": f"{self.hash.name}_rsa",
                                                          "parameters": asn1_core.Null()})
            return algorithm, self.signer.sign(tbs, padding.PKCS1v15(), self.hash)
        raise DeviceCAError(Kind.INTERNAL, f"responder key type {key_type_of(public_key)} is not supported")

    def _verify(self, der: bytes, expected_answers: int) -> None:
        """Refuse a response whose signature does not verify with the responder certificate's key."""
        try:
            response = ocsp.load_der_ocsp_response(der)
            answers = sum(1 for _ in response.responses)
            tbs, signature = response.tbs_response_bytes, response.signature
            public_key = self.responder_cert.public_key()
            if isinstance(public_key, ec.EllipticCurvePublicKey):
                public_key.verify(signature, tbs, ec.ECDSA(response.signature_hash_algorithm))
            else:
                public_key.verify(signature, tbs, padding.PKCS1v15(), response.signature_hash_algorithm)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, this response must not leave
            raise DeviceCAError(Kind.INTERNAL, "OCSP response signed by the token does not verify; not sent",
                                cause=exc) from None
        if answers != expected_answers:
            raise DeviceCAError(Kind.INTERNAL, "OCSP response does not hold one answer per CertID")


_CERT_STATUS = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                "unknown": ocsp.OCSPCertStatus.UNKNOWN}


def _single_response(cert_id: CertId, status: Status, now: dt.datetime, next_update: dt.datetime) -> dict:
    if status.kind == "revoked":
        info = {"revocation_time": utc_seconds(status.revoked_at)}
        flag = reason_flag(status.reason or "unspecified")
        if flag is not None:
            info["revocation_reason"] = flag.name
        cert_status = asn1_ocsp.CertStatus(name="revoked", value=asn1_ocsp.RevokedInfo(info))
    else:
        cert_status = asn1_ocsp.CertStatus(name=status.kind, value=asn1_core.Null())
    return {
        "cert_id": {
            "hash_algorithm": {"algorithm": cert_id.hash_algorithm, "parameters": asn1_core.Null()},
            "issuer_name_hash": cert_id.issuer_name_hash,
            "issuer_key_hash": cert_id.issuer_key_hash,
            "serial_number": cert_id.serial,
        },
        "cert_status": cert_status,
        "this_update": now,
        "next_update": next_update,
    }


def respond(responder: Responder, parsed: ParsedRequest, lookup: Callable[[int], Status]) -> bytes:
    """Answer every CertID of a request, or ``unauthorized`` (unsigned) if one names another issuer.

    RFC 9919 §3.2.3: "unauthorized" is returned when "the server is not capable of responding
    authoritatively"; the whole request gets it, so no answer is signed for a foreign CertID.

    ``lookup`` is asked once per distinct serial, so a CertID repeated in SHA-1 and SHA-256 form
    gets the same status twice, never good and revoked at once. Errors of ``lookup`` propagate;
    the edge maps them with :func:`status_for_error`.
    """
    if not all(responder.matches(cert_id) for cert_id in parsed.cert_ids):
        return error_response("unauthorized")
    statuses: dict[int, Status] = {}
    answers = []
    for cert_id in parsed.cert_ids:
        if cert_id.serial not in statuses:
            statuses[cert_id.serial] = lookup(cert_id.serial)
        answers.append((cert_id, statuses[cert_id.serial]))
    return responder.sign_responses(answers, parsed.nonce)


# --- responder certificate ------------------------------------------------------------------

def build_responder_certificate(issuer_cert: x509.Certificate, issuer_signer, responder_public_key, clock: Clock,
                                validity: dt.timedelta = dt.timedelta(days=7), *, serial: int,
                                linter: Linter | None = None) -> x509.Certificate:
    """A short-lived delegated OCSP responder certificate issued by ``issuer_cert`` (RFC 6960 §4.2.2.2).

    EKU id-kp-OCSPSigning, id-pkix-ocsp-nocheck (§4.2.2.2.1) and, as RFC 9919 §3.2.2 recommends,
    neither AIA nor CRL DP. notAfter never passes the issuer's.
    """
    now = clock.now()
    if now >= issuer_cert.not_valid_after_utc:
        raise DeviceCAError(Kind.INTERNAL, "the issuing CA certificate has expired")
    issuer_ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_responder_name(issuer_cert.subject))
        .issuer_name(issuer_cert.subject)
        .public_key(responder_public_key)
        .serial_number(serial)
        .not_valid_before(max(now - BACKDATE, issuer_cert.not_valid_before_utc))
        .not_valid_after(min(now + validity, issuer_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(responder_public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False)
    )
    certificate = builder.sign(issuer_signer, hash_for_key_type(key_type_of(issuer_cert.public_key())))
    verify_signed_by(certificate, issuer_cert)
    if linter is not None:
        linter(certificate.public_bytes(Encoding.DER), issuer_cert.public_bytes(Encoding.DER))
    return certificate


def _responder_name(issuer: x509.Name) -> x509.Name:
    common_names = issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    organizations = issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    cn = f"{common_names[0].value} OCSP Responder" if common_names else "OCSP Responder"
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(organizations[0].value))] if organizations else []
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])])


def _check_responder(issuer_cert: x509.Certificate, responder_cert: x509.Certificate, signer) -> None:
    """Refuse to start with a responder key, certificate or issuer that cannot produce valid answers."""
    if public_key_der(signer.public_key()) != public_key_der(responder_cert.public_key()):
        raise DeviceCAError(Kind.INTERNAL, "the OCSP responder key does not match the responder certificate")
    verify_signed_by(responder_cert, issuer_cert)
    try:
        eku = responder_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = []
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise DeviceCAError(Kind.INTERNAL, "the OCSP responder certificate lacks EKU id-kp-OCSPSigning")


def _key_bits(certificate: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING value (without the unused-bits octet)."""
    spki = asn1_keys.PublicKeyInfo.load(public_key_der(certificate.public_key()))
    return spki["public_key"].contents[1:]


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
