"""OCSP (RFC 6960 / RFC 9919): requests made by openssl, responses checked by openssl and pkilint."""
from __future__ import annotations

import base64
import datetime as dt
import shutil
import subprocess
from urllib.parse import quote

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from device_ca.ca.clock import FixedClock, SystemClock
from device_ca.ca.lint import lint_certificate, lint_ocsp_response, require_clean
from device_ca.ca.ocsp import (
    MAX_CERT_IDS, CertId, MalformedRequest, ParsedRequest, Responder, Status, build_responder_certificate,
    error_response, parse_get_path, parse_request, respond, status_for_error,
)
from device_ca.errors import DeviceCAError, Kind
from helpers import CorruptingSigner, software_ca


class Pki:
    """Root, issuing CA, responder and three leaves written as PEM for openssl."""

    def __init__(self, directory):
        self.now = SystemClock().now()          # openssl judges times against the real clock
        self.clock = FixedClock(self.now)
        self.root, _, self.ca, self.ca_key = software_ca(FixedClock(self.now - dt.timedelta(hours=1)))
        self.responder_key = ec.generate_private_key(ec.SECP256R1())
        self.responder_cert = build_responder_certificate(self.ca, self.ca_key, self.responder_key.public_key(),
                                                          self.clock, serial=0x0C5B)
        self.responder = Responder(self.ca, self.responder_cert, self.responder_key, self.clock)
        self.dir = directory
        self.leaves = {name: self._leaf(name) for name in ("good", "revoked", "unknown", "other")}
        self.revoked_at = self.now - dt.timedelta(hours=2)
        self.statuses = {
            self.leaves["good"].serial_number: Status("good"),
            self.leaves["revoked"].serial_number: Status("revoked", self.revoked_at, "keyCompromise"),
            self.leaves["other"].serial_number: Status("good"),
        }
        self._write("root.pem", self.root)
        self._write("ca.pem", self.ca)

    def lookup(self, serial):
        return self.statuses.get(serial, Status("unknown"))

    def _leaf(self, name):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"{name}-1")]))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(minutes=30))
            .not_valid_after(self.now + dt.timedelta(days=1))
            .sign(self.ca_key, hashes.SHA256())
        )
        self._write(f"{name}.pem", cert)
        return cert

    def _write(self, name, cert):
        (self.dir / name).write_bytes(cert.public_bytes(Encoding.PEM))

    def openssl_request(self, *leaves, options=()):
        """A request made by ``openssl ocsp -reqout`` (digest options go before -cert)."""
        out = self.dir / "req.der"
        args = ["openssl", "ocsp", *options, "-issuer", self.dir / "ca.pem"]
        for leaf in leaves:
            args += ["-cert", self.dir / f"{leaf}.pem"]
        subprocess.run(args + ["-reqout", out], check=True, capture_output=True)
        return out.read_bytes()

    def openssl_check(self, response, *leaves, options=(), request=None):
        """``openssl ocsp -respin``: verification and the status lines, as one string."""
        (self.dir / "resp.der").write_bytes(response)
        args = ["openssl", "ocsp", "-respin", self.dir / "resp.der", *options,
                "-issuer", self.dir / "ca.pem", "-CAfile", self.dir / "root.pem"]
        if request is not None:
            (self.dir / "check-req.der").write_bytes(request)
            args += ["-reqin", self.dir / "check-req.der"]
        else:
            args += ["-no_nonce"]
            for leaf in leaves:
                args += ["-cert", self.dir / f"{leaf}.pem"]
        result = subprocess.run(args, capture_output=True, text=True)
        return result.stdout + result.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("ocsp"))


def _request(cert_ids, *, nonce_value=None, requestor_name=None, signed=False):
    """An OCSPRequest assembled with asn1crypto, for shapes openssl will not produce."""
    tbs = {
        "request_list": [{"req_cert": {
            "hash_algorithm": {"algorithm": c.hash_algorithm},
            "issuer_name_hash": c.issuer_name_hash, "issuer_key_hash": c.issuer_key_hash,
            "serial_number": c.serial}} for c in cert_ids],
    }
    if nonce_value is not None:
        tbs["request_extensions"] = [{"extn_id": "nonce", "critical": False, "extn_value": nonce_value}]
    if requestor_name is not None:
        tbs["requestor_name"] = requestor_name
    request = {"tbs_request": tbs}
    if signed:
        request["optional_signature"] = {"signature_algorithm": {"algorithm": "sha256_ecdsa"},
                                         "signature": b"\x30\x06\x02\x01\x01\x02\x01\x01"}
    return asn1_ocsp.OCSPRequest(request).dump()


def _cert_id(pki, leaf="good", algorithm="sha1"):
    der = pki.openssl_request(leaf, options=("-" + algorithm, "-no_nonce"))
    return parse_request(der).cert_ids[0]


def _single_status(der):
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    return response


# --- parsing requests made by openssl ---------------------------------------------------------

@pytest.mark.parametrize("options, algorithm, nonce_length", [
    ((), "sha1", 16),
    (("-no_nonce",), "sha1", None),
    (("-sha256",), "sha256", 16),
    (("-sha256", "-no_nonce"), "sha256", None),
])
def test_openssl_requests_parse(pki, options, algorithm, nonce_length):
    parsed = parse_request(pki.openssl_request("good", options=options))
    assert len(parsed.cert_ids) == 1
    cert_id = parsed.cert_ids[0]
    assert cert_id.hash_algorithm == algorithm
    assert cert_id.serial == pki.leaves["good"].serial_number
    assert pki.responder.matches(cert_id)
    assert (len(parsed.nonce) if parsed.nonce else None) == nonce_length


def test_openssl_multi_certid_request_parses_in_order(pki):
    parsed = parse_request(pki.openssl_request("good", "revoked", "unknown"))
    assert [c.serial for c in parsed.cert_ids] == [pki.leaves[n].serial_number for n in ("good", "revoked", "unknown")]


# --- responses checked by openssl and pkilint -------------------------------------------------

@pytest.mark.parametrize("leaf, expected", [
    ("good", ["good.pem: good"]),
    ("revoked", ["revoked.pem: revoked", "Reason: keyCompromise"]),
    ("unknown", ["unknown.pem: unknown"]),
])
@pytest.mark.parametrize("digest", ["-sha1", "-sha256"])
def test_response_verifies_with_openssl(pki, leaf, expected, digest):
    parsed = parse_request(pki.openssl_request(leaf, options=(digest,)))
    der = respond(pki.responder, parsed, pki.lookup)
    out = pki.openssl_check(der, leaf, options=(digest,))
    assert "Response verify OK" in out, out
    for line in expected:
        assert line in out, out
    assert lint_ocsp_response(der) == []


def test_response_fields(pki):
    parsed = parse_request(pki.openssl_request("revoked", options=("-sha256",)))
    der = respond(pki.responder, parsed, pki.lookup)
    response = _single_status(der)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is x509.ReasonFlags.key_compromise
    assert response.revocation_time_utc == pki.revoked_at
    assert response.this_update_utc == pki.now
    assert response.next_update_utc == pki.now + dt.timedelta(hours=24)
    assert response.hash_algorithm.name == "sha256"
    assert response.issuer_key_hash == parsed.cert_ids[0].issuer_key_hash
    assert response.issuer_name_hash == parsed.cert_ids[0].issuer_name_hash
    assert response.serial_number == pki.leaves["revoked"].serial_number
    assert response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(
        pki.responder_key.public_key()).digest
    assert response.responder_name is None
    assert response.certificates == [pki.responder_cert]


def test_unspecified_reason_is_omitted(pki):
    cert_id = _cert_id(pki, "revoked")
    der = pki.responder.sign_response(cert_id, Status("revoked", pki.revoked_at, "unspecified"))
    response = _single_status(der)
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is None
    assert lint_ocsp_response(der) == []


def test_nonce_is_echoed_and_openssl_checks_it(pki):
    request = pki.openssl_request("good")
    parsed = parse_request(request)
    der = respond(pki.responder, parsed, pki.lookup)
    echoed = ocsp.load_der_ocsp_response(der).extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    assert echoed == parsed.nonce
    out = pki.openssl_check(der, request=request)
    assert "Response verify OK" in out and "nonce" not in out.lower(), out


def test_no_nonce_in_request_means_none_in_response(pki):
    der = respond(pki.responder, parse_request(pki.openssl_request("good", options=("-no_nonce",))), pki.lookup)
    assert len(ocsp.load_der_ocsp_response(der).extensions) == 0


def test_multi_certid_request_gets_one_single_response_each(pki):
    request = pki.openssl_request("good", "revoked", "unknown", "good")
    parsed = parse_request(request)
    der = respond(pki.responder, parsed, pki.lookup)
    response = _single_status(der)
    singles = list(response.responses)
    assert [s.serial_number for s in singles] == [c.serial for c in parsed.cert_ids]
    assert [s.certificate_status for s in singles] == [
        ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED, ocsp.OCSPCertStatus.UNKNOWN, ocsp.OCSPCertStatus.GOOD]
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == parsed.nonce
    assert lint_ocsp_response(der) == []
    out = pki.openssl_check(der, request=request)
    assert "Response verify OK" in out and "nonce" not in out.lower(), out
    out = pki.openssl_check(der, "good", "revoked", "unknown")
    assert "Response verify OK" in out, out
    assert "good.pem: good" in out and "revoked.pem: revoked" in out and "unknown.pem: unknown" in out, out
    assert "Reason: keyCompromise" in out


def test_sha1_and_sha256_certids_for_the_same_serial_agree(pki):
    ids = (_cert_id(pki, "revoked", "sha1"), _cert_id(pki, "revoked", "sha256"))
    asked = []

    def lookup(serial):
        asked.append(serial)
        return pki.lookup(serial)

    der = respond(pki.responder, ParsedRequest(ids, None), lookup)
    singles = list(_single_status(der).responses)
    assert [s.hash_algorithm.name for s in singles] == ["sha1", "sha256"]
    assert {s.certificate_status for s in singles} == {ocsp.OCSPCertStatus.REVOKED}
    assert asked == [pki.leaves["revoked"].serial_number]


def test_pkilint_cli_on_a_response(pki, tmp_path):
    if shutil.which("lint_ocsp_response") is None:
        pytest.skip("pkilint command line not installed")
    der = respond(pki.responder, parse_request(pki.openssl_request("revoked")), pki.lookup)
    (tmp_path / "resp.der").write_bytes(der)
    cli = subprocess.run(["lint_ocsp_response", "lint", "-s", "WARNING", tmp_path / "resp.der"],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.strip() == "", cli.stdout + cli.stderr


# --- requests that cannot be answered ---------------------------------------------------------

def _malformed_cases(pki):
    good = pki.openssl_request("good")
    cert_id = parse_request(good).cert_ids[0]
    return {
        "empty": b"",
        "garbage": b"\x00garbage\xff" * 7,
        "truncated": good[:-1],
        "trailing bytes": good + b"\x00",
        "not a request": pki.ca.public_bytes(Encoding.DER),
        "no CertID": _request([]),
        "11 CertIDs": _request([cert_id] * (MAX_CERT_IDS + 1)),
        "nonce of 0 octets": _request([cert_id], nonce_value=asn1_core.OctetString(b"")),
        "nonce of 129 octets": _request([cert_id], nonce_value=asn1_core.OctetString(b"n" * 129)),
        "nonce not an OCTET STRING": _request([cert_id], nonce_value=asn1_core.OctetString(b"\x05")).replace(
            b"\x04\x03\x04\x01\x05", b"\x04\x03\x02\x01\x05"),
        "nonce without its OCTET STRING": _request([cert_id], nonce_value=asn1_core.OctetString(b"\x05")).replace(
            b"\x04\x03\x04\x01\x05", b"\x04\x03\x05\x01\x05"),
        "md5 CertID": _request([CertId("md5", b"\x00" * 16, b"\x00" * 16, 5)]),
        "short hashes": _request([CertId("sha256", b"\x00" * 20, b"\x00" * 20, 5)]),
        "negative serial": _request([CertId("sha1", cert_id.issuer_name_hash, cert_id.issuer_key_hash, -5)]),
    }


def test_malformed_requests_are_refused(pki):
    for name, der in _malformed_cases(pki).items():
        with pytest.raises(MalformedRequest) as error:
            parse_request(der)
        assert error.value.kind is Kind.MALFORMED, name
        assert status_for_error(error.value) == "malformedRequest"


@pytest.mark.parametrize("length", [1, 16, 32, 33, 128])
def test_nonce_lengths_allowed_by_rfc9654(pki, length):
    cert_id = _cert_id(pki)
    nonce = bytes(range(256))[:length]
    parsed = parse_request(_request([cert_id], nonce_value=asn1_core.OctetString(nonce)))
    assert parsed.nonce == nonce
    der = respond(pki.responder, parsed, pki.lookup)
    assert ocsp.load_der_ocsp_response(der).extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce


def test_ten_certids_are_answered(pki):
    cert_id = _cert_id(pki)
    parsed = parse_request(_request([cert_id] * MAX_CERT_IDS))
    assert len(list(_single_status(respond(pki.responder, parsed, pki.lookup)).responses)) == MAX_CERT_IDS


def test_signed_request_and_requestor_name_are_treated_as_unsigned(pki):
    cert_id = _cert_id(pki)
    name = asn1_ocsp.GeneralName(name="dns_name", value="client.example")
    parsed = parse_request(_request([cert_id], requestor_name=name, signed=True))
    assert parsed == ParsedRequest((cert_id,), None, plain=False)     # answered, but never cached by its bytes


def _with_extension(der: bytes, oid: str, critical: bool, value: bytes) -> bytes:
    request = asn1_ocsp.OCSPRequest.load(der)
    tbs = request["tbs_request"].native
    tbs["request_extensions"] = [{"extn_id": oid, "critical": critical, "extn_value": value}]
    return asn1_ocsp.OCSPRequest({"tbs_request": {
        "request_list": [{"req_cert": r["req_cert"]} for r in tbs["request_list"]],
        "request_extensions": [{"extn_id": oid, "critical": critical, "extn_value": value}]}}).dump()


def test_unknown_critical_extensions_are_refused_and_others_ignored(pki):
    """RFC 6960 §4.4 (issue 15, item 2): an extension the responder does not understand is ignored
    unless it is critical, which makes the request malformed; a request with one is never a key of
    the bytes caches."""
    cert_id = _cert_id(pki)
    plain = _request([cert_id])
    assert parse_request(plain).plain
    ignored = parse_request(_with_extension(plain, "1.3.6.1.4.1.99999.1", False, b"\x04\x02ab"))
    assert ignored == ParsedRequest((cert_id,), None, plain=False)
    with pytest.raises(MalformedRequest, match="critical extension 1.3.6.1.4.1.99999.1"):
        parse_request(_with_extension(plain, "1.3.6.1.4.1.99999.1", True, b"\x04\x02ab"))


@pytest.mark.parametrize("status", ["malformedRequest", "internalError", "tryLater", "unauthorized"])
def test_error_responses_are_unsigned_without_response_bytes(status):
    der = error_response(status)
    parsed = asn1_ocsp.OCSPResponse.load(der)
    assert parsed["response_status"].native == {"malformedRequest": "malformed_request",
                                                "internalError": "internal_error", "tryLater": "try_later",
                                                "unauthorized": "unauthorized"}[status]
    assert isinstance(parsed["response_bytes"], asn1_core.Void)
    assert len(der) == 5
    assert lint_ocsp_response(der) == []


def test_certid_of_another_issuer_is_unauthorized(pki):
    _, _, other_ca, _ = software_ca(pki.clock)
    (pki.dir / "other-ca.pem").write_bytes(other_ca.public_bytes(Encoding.PEM))
    foreign = parse_request(subprocess.run(
        ["openssl", "ocsp", "-issuer", pki.dir / "other-ca.pem", "-cert", pki.dir / "good.pem", "-reqout", "-"],
        capture_output=True, check=True).stdout)
    assert not pki.responder.matches(foreign.cert_ids[0])
    assert respond(pki.responder, foreign, pki.lookup) == error_response("unauthorized")
    mixed = ParsedRequest((_cert_id(pki), foreign.cert_ids[0]), None)
    assert respond(pki.responder, mixed, pki.lookup) == error_response("unauthorized")
    with pytest.raises(DeviceCAError) as error:
        pki.responder.sign_response(foreign.cert_ids[0], Status("good"))
    assert error.value.kind is Kind.UNAUTHORIZED


# --- GET ----------------------------------------------------------------------------------------

def test_get_path_forms(pki):
    der = pki.openssl_request("good", options=("-sha256",))
    b64 = base64.b64encode(der).decode()
    assert parse_get_path(quote(b64, safe="")) == der             # %2F %2B %3D
    assert parse_get_path(b64) == der                            # raw / and + are base64 characters
    assert parse_request(parse_get_path(quote(b64, safe=""))).cert_ids[0].hash_algorithm == "sha256"


def test_get_path_rejections(pki):
    cert_id = _cert_id(pki)
    der = next(d for d in (_request([cert_id], nonce_value=asn1_core.OctetString(b"n" * k)) for k in (1, 2, 3))
               if len(d) % 3)                                    # one whose base64 needs padding
    b64 = base64.b64encode(der).decode()
    assert parse_get_path(b64) == der
    for bad in ["", b64.rstrip("="), quote(b64.rstrip("="), safe=""), b64[:20] + " " + b64[20:],
                b64[:20] + "%0A" + b64[20:], base64.urlsafe_b64encode(der).decode() + "-_", "%%%", "é" + b64,
                "!" * 40, "A" * 9000]:
        with pytest.raises(MalformedRequest):
            parse_get_path(bad)


# --- responder certificate and signer ---------------------------------------------------------

def test_responder_certificate_profile(pki):
    cert = pki.responder_cert
    findings = lint_certificate(cert.public_bytes(Encoding.DER), pki.ca.public_bytes(Encoding.DER))
    require_clean(findings, "WARNING")
    cert.verify_directly_issued_by(pki.ca)
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.OCSP_SIGNING])
    nocheck = ext.get_extension_for_oid(ExtensionOID.OCSP_NO_CHECK)
    assert not nocheck.critical and nocheck.value.public_bytes() == b"\x05\x00"
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign and not ku.value.crl_sign
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest == \
        x509.SubjectKeyIdentifier.from_public_key(pki.responder_key.public_key()).digest
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == \
        pki.ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    for absent in (x509.AuthorityInformationAccess, x509.CRLDistributionPoints):
        with pytest.raises(x509.ExtensionNotFound):
            ext.get_extension_for_class(absent)
    assert cert.subject.rfc4514_string() == "CN=Test CA Device Issuing CA OCSP Responder,O=Test CA"
    assert cert.not_valid_after_utc == pki.now + dt.timedelta(days=7)
    assert cert.serial_number == 0x0C5B


def test_responder_certificate_never_outlives_its_issuer(pki):
    late = FixedClock(pki.ca.not_valid_after_utc - dt.timedelta(days=1))
    cert = build_responder_certificate(pki.ca, pki.ca_key, pki.responder_key.public_key(), late, serial=7)
    assert cert.not_valid_after_utc == pki.ca.not_valid_after_utc
    with pytest.raises(DeviceCAError):
        build_responder_certificate(pki.ca, pki.ca_key, pki.responder_key.public_key(),
                                    FixedClock(pki.ca.not_valid_after_utc), serial=8)


def test_corrupted_responder_signature_is_never_returned(pki):
    responder = Responder(pki.ca, pki.responder_cert, CorruptingSigner(pki.responder_key), pki.clock)
    one = ParsedRequest((_cert_id(pki),), b"nonce")
    for parsed in (one, ParsedRequest(one.cert_ids * 2, None)):
        with pytest.raises(DeviceCAError) as error:
            respond(responder, parsed, pki.lookup)
        assert error.value.kind is Kind.INTERNAL


def test_responder_refuses_a_mismatched_key_or_a_certificate_without_ocsp_signing(pki):
    with pytest.raises(DeviceCAError):
        Responder(pki.ca, pki.responder_cert, ec.generate_private_key(ec.SECP256R1()), pki.clock)
    with pytest.raises(DeviceCAError):
        Responder(pki.ca, pki.leaves["good"], pki.responder_key, pki.clock)
    with pytest.raises(DeviceCAError):
        Responder(pki.root, pki.responder_cert, pki.responder_key, pki.clock)


def test_responder_with_expired_certificate_refuses_to_sign(pki):
    clock = FixedClock(pki.responder_cert.not_valid_after_utc)
    responder = Responder(pki.ca, pki.responder_cert, pki.responder_key, clock)
    with pytest.raises(DeviceCAError) as error:
        responder.sign_response(_cert_id(pki), Status("good"))
    assert error.value.kind is Kind.INTERNAL


def test_next_update_is_capped_at_responder_not_after(pki):
    clock = FixedClock(pki.responder_cert.not_valid_after_utc - dt.timedelta(hours=1))
    responder = Responder(pki.ca, pki.responder_cert, pki.responder_key, clock)
    der = responder.sign_response(_cert_id(pki), Status("good"))
    assert _single_status(der).next_update_utc == pki.responder_cert.not_valid_after_utc


def test_rsa_responder_key_signs_single_and_multi_responses(pki):
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(65537, 2048)
    cert = build_responder_certificate(pki.ca, pki.ca_key, key.public_key(), pki.clock, serial=0x5A)
    responder = Responder(pki.ca, cert, key, pki.clock)
    single = pki.openssl_request("good")
    double = pki.openssl_request("good", "revoked")
    for request in (single, double):
        der = respond(responder, parse_request(request), pki.lookup)
        assert lint_ocsp_response(der) == []
        out = pki.openssl_check(der, request=request)
        assert "Response verify OK" in out and "nonce" not in out.lower(), out
        assert ocsp.load_der_ocsp_response(der).signature_algorithm_oid == x509.SignatureAlgorithmOID.RSA_WITH_SHA256


def test_status_rejects_inconsistent_values():
    with pytest.raises(ValueError):
        Status("revoked")
    with pytest.raises(ValueError):
        Status("good", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    with pytest.raises(ValueError):
        Status("valid")


def test_status_for_error_mapping():
    assert status_for_error(DeviceCAError(Kind.DB_UNAVAILABLE, "x")) == "tryLater"
    assert status_for_error(DeviceCAError(Kind.HSM_UNAVAILABLE, "x")) == "tryLater"
    assert status_for_error(DeviceCAError(Kind.UNAUTHORIZED, "x")) == "unauthorized"
    assert status_for_error(DeviceCAError(Kind.INTERNAL, "x")) == "internalError"
