"""device_ca.ca.lint: pkilint run in-process on the certificate, CRL and OCSP templates.

The "good" objects built here are the templates the CA copies; pkilint must report nothing
on them at NOTICE or above. The faulty ones must be flagged at ERROR.
"""
from __future__ import annotations

import base64
import concurrent.futures
import datetime as dt
import json
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
)

from device_ca.ca import lint
from device_ca.ca.lint import Finding, LintError, require_clean

REPO = Path(__file__).resolve().parents[2]
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
BASE_URL = "http://127.0.0.1:8080"

# --------------------------------------------------------------------------- builders


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(*attrs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    """A DN of one attribute per RDN, most significant first; cryptography encodes O, OU and
    CN as UTF8String by default (test_device_certificate_is_clean checks it)."""
    return x509.Name([x509.NameAttribute(oid, v) for oid, v in attrs])


def _key_usage(**set_bits: bool) -> x509.KeyUsage:
    bits = dict.fromkeys(
        (
            "digital_signature content_commitment key_encipherment data_encipherment "
            "key_agreement key_cert_sign crl_sign encipher_only decipher_only"
        ).split(),
        False,
    )
    bits.update(set_bits)
    return x509.KeyUsage(**bits)


def _serial() -> int:
    """143 random bits with the top one set: exactly 18 octets in DER, always positive."""
    return secrets.randbits(142) | (1 << 142)


def _der(obj) -> bytes:
    return obj.public_bytes(serialization.Encoding.DER)


def _pem(cert_der: bytes) -> bytes:
    """PEM without parsing, so that certificates ``cryptography`` refuses can be written."""
    b64 = base64.encodebytes(cert_der).decode().replace("\n", "")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return ("-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n").encode()


def _ca_cert(subject, issuer, public_key, signer, *, path_length, aki_key):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_key), critical=False)
        .sign(signer, hashes.SHA256())
    )


DEVICE_SUBJECT = _name(
    (NameOID.ORGANIZATION_NAME, "BuildingCo"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "door-lock"),
    (NameOID.COMMON_NAME, "lock-101"),
)


@dataclass
class Pki:
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    issuing_key: ec.EllipticCurvePrivateKey
    issuing: x509.Certificate
    responder_key: ec.EllipticCurvePrivateKey
    responder: x509.Certificate
    device_key: ec.EllipticCurvePrivateKey

    def device_builder(self, *, skip: tuple[type, ...] = ()) -> x509.CertificateBuilder:
        """The device certificate template; ``skip`` drops extensions by class."""
        pub = self.device_key.public_key()
        extensions = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_key_usage(digital_signature=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
            (x509.SubjectKeyIdentifier.from_public_key(pub), False),
            (
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    self.issuing.extensions.get_extension_for_class(
                        x509.SubjectKeyIdentifier
                    ).value
                ),
                False,
            ),
            (
                x509.CRLDistributionPoints(
                    [
                        x509.DistributionPoint(
                            [x509.UniformResourceIdentifier(f"{BASE_URL}/crl/issuing.crl")],
                            None,
                            None,
                            None,
                        )
                    ]
                ),
                False,
            ),
            (
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.OCSP,
                            x509.UniformResourceIdentifier(f"{BASE_URL}/ocsp"),
                        ),
                        x509.AccessDescription(
                            AuthorityInformationAccessOID.CA_ISSUERS,
                            x509.UniformResourceIdentifier(f"{BASE_URL}/ca/issuing.crt"),
                        ),
                    ]
                ),
                False,
            ),
        ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(DEVICE_SUBJECT)
            .issuer_name(self.issuing.subject)
            .public_key(pub)
            .serial_number(_serial())
            .not_valid_before(NOW - dt.timedelta(minutes=5))
            .not_valid_after(NOW + dt.timedelta(days=365))
        )
        for value, critical in extensions:
            if not isinstance(value, skip):
                builder = builder.add_extension(value, critical=critical)
        return builder

    def device(self, builder: x509.CertificateBuilder | None = None) -> bytes:
        return _der((builder or self.device_builder()).sign(self.issuing_key, hashes.SHA256()))


def build_pki() -> Pki:
    root_key, issuing_key, responder_key = _key(), _key(), _key()
    root_name = _name((NameOID.ORGANIZATION_NAME, "BuildingCo"), (NameOID.COMMON_NAME, "BuildingCo Root CA"))
    issuing_name = _name(
        (NameOID.ORGANIZATION_NAME, "BuildingCo"), (NameOID.COMMON_NAME, "BuildingCo Issuing CA")
    )
    root = _ca_cert(
        root_name, root_name, root_key.public_key(), root_key,
        path_length=None, aki_key=root_key.public_key(),
    )
    issuing = _ca_cert(
        issuing_name, root_name, issuing_key.public_key(), root_key,
        path_length=0, aki_key=root_key.public_key(),
    )
    responder_pub = responder_key.public_key()
    responder = (
        x509.CertificateBuilder()
        .subject_name(
            _name(
                (NameOID.ORGANIZATION_NAME, "BuildingCo"),
                (NameOID.COMMON_NAME, "BuildingCo Issuing CA OCSP Responder"),
            )
        )
        .issuer_name(issuing_name)
        .public_key(responder_pub)
        .serial_number(_serial())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(responder_pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing_key.public_key()),
            critical=False,
        )
        .sign(issuing_key, hashes.SHA256())
    )
    return Pki(root_key, root, issuing_key, issuing, responder_key, responder, _key())


@pytest.fixture(scope="module")
def pki() -> Pki:
    return build_pki()


def _crl(pki: Pki, *, crl_number: int | None = 7, reason=x509.ReasonFlags.key_compromise,
         reason_critical: bool = False, entries: int = 1) -> bytes:
    revoked = [
        x509.RevokedCertificateBuilder()
        .serial_number(_serial())
        .revocation_date(NOW - dt.timedelta(hours=2))
        .add_extension(x509.CRLReason(reason), critical=reason_critical)
        .build()
        for _ in range(entries)
    ]
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=revoked)
        .issuer_name(pki.issuing.subject)
        .last_update(NOW)
        .next_update(NOW + dt.timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(pki.issuing_key.public_key()),
            critical=False,
        )
    )
    if crl_number is not None:
        builder = builder.add_extension(x509.CRLNumber(crl_number), critical=False)
    return _der(builder.sign(pki.issuing_key, hashes.SHA256()))


def _ocsp_response(pki: Pki, device: x509.Certificate, *, revoked: bool = False,
                   this_update=None, next_update=None) -> bytes:
    this_update = this_update or NOW
    next_update = next_update or NOW + dt.timedelta(hours=12)
    status = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=device,
            issuer=pki.issuing,
            algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=this_update,
            next_update=next_update,
            revocation_time=NOW - dt.timedelta(hours=1) if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.responder)
        .certificates([pki.responder])
    )
    return builder.sign(pki.responder_key, hashes.SHA256()).public_bytes(
        serialization.Encoding.DER
    )


def _resign_tbs(cert_der: bytes, signer, **tbs_fields) -> bytes:
    """Re-encode the certificate with TBS fields the ``cryptography`` builder refuses."""
    cert = asn1_x509.Certificate.load(cert_der)
    tbs = cert["tbs_certificate"]
    for field, value in tbs_fields.items():
        tbs[field] = value
    tbs_der = tbs.dump(force=True)
    return asn1_x509.Certificate(
        {
            "tbs_certificate": asn1_x509.TbsCertificate.load(tbs_der),
            "signature_algorithm": cert["signature_algorithm"],
            "signature_value": signer.sign(tbs_der, ec.ECDSA(hashes.SHA256())),
        }
    ).dump()


def _codes(findings: list[Finding], at_least: str = "ERROR") -> set[str]:
    rank = lint.SEVERITIES.index(at_least)
    return {f.code for f in findings if lint.SEVERITIES.index(f.severity) <= rank}


# --------------------------------------------------------------------------- good templates


def test_ca_certificates_are_clean(pki):
    root, issuing = _der(pki.root), _der(pki.issuing)
    assert lint.lint_certificate(root) == []
    assert lint.lint_certificate(root, root) == []
    assert lint.lint_certificate(issuing) == []
    assert lint.lint_certificate(issuing, root) == []


def test_device_certificate_is_clean(pki):
    device = pki.device()
    parsed = x509.load_der_x509_certificate(device)
    assert parsed.subject.rfc4514_string() == "CN=lock-101,OU=door-lock,O=BuildingCo"
    tbs = asn1_x509.Certificate.load(device)["tbs_certificate"]
    assert len(tbs["serial_number"].contents) == 18 and tbs["serial_number"].native > 0
    assert {rdn[0]["value"].name for rdn in tbs["subject"].chosen} == {"utf8_string"}

    assert lint.lint_certificate(device) == []
    assert lint.lint_certificate(device, _der(pki.issuing)) == []
    require_clean(lint.lint_certificate(device, _der(pki.issuing)))


def test_ocsp_responder_certificate_is_clean(pki):
    assert lint.lint_certificate(_der(pki.responder), _der(pki.issuing)) == []


def test_crl_is_clean(pki):
    findings = lint.lint_crl(_crl(pki))
    assert findings == []
    require_clean(findings)
    assert lint.lint_crl(_crl(pki, entries=0)) == []  # revokedCertificates omitted when empty


@pytest.mark.parametrize("revoked", [False, True], ids=["good", "revoked"])
def test_delegated_ocsp_response_is_clean(pki, revoked):
    device = x509.load_der_x509_certificate(pki.device())
    resp = _ocsp_response(pki, device, revoked=revoked)
    assert ocsp.load_der_ocsp_response(resp).responder_key_hash is not None  # byKey
    findings = lint.lint_ocsp_response(resp)
    assert findings == []
    require_clean(findings)


def test_ocsp_error_response_is_clean():
    resp = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    assert lint.lint_ocsp_response(resp.public_bytes(serialization.Encoding.DER)) == []


# --------------------------------------------------------------------------- faulty objects

# Codes pkilint 0.13.3 reports for the faulty certificates below.
EXPECTED_CA_WITHOUT_KCS = "pkix.ca_certificate_keycertsign_keyusage_not_set"
EXPECTED_MISSING_AKI = "pkix.authority_key_identifier_extension_absent"
EXPECTED_BAD_SIGNATURE = "pkix.signature_verification_failed"
EXPECTED_WRONG_ISSUER = {
    "pkix.issuer_and_subject_key_identifier_not_equal",
    "pkix.signature_verification_failed",
}



@pytest.mark.parametrize(
    "serial", [-(1 << 64), 0, 1 << 160], ids=["negative", "zero", "21-octets"]
)
def test_bad_serial_is_an_error(pki, serial):
    device = _resign_tbs(pki.device(), pki.issuing_key, serial_number=serial)
    findings = lint.lint_certificate(device)
    assert "pkix.certificate_serial_number_out_of_range" in _codes(findings)
    with pytest.raises(LintError) as info:
        require_clean(findings)
    assert "ERROR pkix.certificate_serial_number_out_of_range at " in str(info.value)


def test_ca_without_key_cert_sign_is_an_error(pki):
    builder = pki.device_builder(skip=(x509.BasicConstraints, x509.KeyUsage)).add_extension(
        x509.BasicConstraints(ca=True, path_length=0), critical=True
    ).add_extension(_key_usage(digital_signature=True, crl_sign=True), critical=True)
    findings = lint.lint_certificate(pki.device(builder))
    assert EXPECTED_CA_WITHOUT_KCS in _codes(findings)
    with pytest.raises(LintError):
        require_clean(findings)


def test_missing_aki_is_an_error(pki):
    device = pki.device(pki.device_builder(skip=(x509.AuthorityKeyIdentifier,)))
    findings = lint.lint_certificate(device)
    assert EXPECTED_MISSING_AKI in _codes(findings)
    with pytest.raises(LintError):
        require_clean(findings)


def test_chain_checks_only_with_issuer(pki):
    """Signed by the root instead of the issuing CA: only the chain checks can see it."""
    device = _der(pki.device_builder().sign(pki.root_key, hashes.SHA256()))
    assert lint.lint_certificate(device) == []
    findings = lint.lint_certificate(device, _der(pki.issuing))
    assert EXPECTED_BAD_SIGNATURE in _codes(findings)
    with pytest.raises(LintError):
        require_clean(findings)


def test_chain_name_and_key_id_mismatch(pki):
    """Checked against the wrong issuer: the issuer-side findings carry an ``issuer:`` node."""
    findings = lint.lint_certificate(pki.device(), _der(pki.root))
    errors = [f for f in findings if f.severity == "ERROR"]
    assert {f.code for f in errors} >= EXPECTED_WRONG_ISSUER
    assert any(f.node.startswith("issuer:") for f in errors)
    # pkilint rates a DN mismatch between issuer and subject only a NOTICE.
    assert ("NOTICE", "pkix.issuer_and_subject_dn_not_binary_equal") in {
        (f.severity, f.code) for f in findings
    }


def test_crl_without_number_is_an_error(pki):
    findings = lint.lint_crl(_crl(pki, crl_number=None))
    assert "pkix.crl_number_missing" in _codes(findings)
    with pytest.raises(LintError):
        require_clean(findings)


def test_crl_critical_reason_code_is_an_error(pki):
    findings = lint.lint_crl(_crl(pki, reason_critical=True))
    assert "pkix.crl_reason_code_extension_critical" in _codes(findings)
    with pytest.raises(LintError):
        require_clean(findings)


def test_crl_reason_unspecified_passes_the_pkix_profile(pki):
    """Only the BR profile (not used here) objects to reason code ``unspecified``."""
    assert lint.lint_crl(_crl(pki, reason=x509.ReasonFlags.unspecified)) == []


def test_ocsp_negative_validity_is_an_error(pki):
    device = x509.load_der_x509_certificate(pki.device())
    resp = _ocsp_response(pki, device, next_update=NOW - dt.timedelta(hours=1))
    findings = lint.lint_ocsp_response(resp)
    assert "pkix.ocsp_negative_validity_period" in _codes(findings)
    with pytest.raises(LintError):
        require_clean(findings)


@pytest.mark.parametrize(
    "call", [lint.lint_certificate, lint.lint_crl, lint.lint_ocsp_response],
    ids=["cert", "crl", "ocsp"],
)
def test_undecodable_input_is_fatal(call):
    for junk in (b"", b"not DER", b"\x30\x03\x02\x01"):
        findings = call(junk)
        assert [(f.severity, f.code) for f in findings] == [("FATAL", lint.LOAD_FAILED)]
        with pytest.raises(LintError):
            require_clean(findings, threshold="FATAL")


def test_undecodable_issuer_is_fatal(pki):
    findings = lint.lint_certificate(pki.device(), b"\x30\x00")
    assert [(f.severity, f.code) for f in findings] == [("FATAL", lint.LOAD_FAILED)]


# --------------------------------------------------------------------------- ignored codes


def test_urn_san_is_ignored(pki):
    """pkilint 0.13.3 flags RFC 9039 ``urn:dev:`` SAN URIs; lint_certificate drops that code."""
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier("urn:dev:ops:32473-BuildingCo-lock-101")]
    )
    device = pki.device(pki.device_builder().add_extension(san, critical=False))
    assert "pkix.invalid_uri_syntax" in _raw_codes(device)
    assert lint.lint_certificate(device, _der(pki.issuing)) == []


def _raw_codes(cert_der: bytes) -> set[str]:
    from pkilint import loader

    cert = loader.load_der_certificate(cert_der, "certificate", "certificate")
    return {
        d.finding.code
        for r in lint._cert_validator().validate(cert.root)
        for d in r.finding_descriptions
    }


def test_malformed_non_urn_uri_is_still_reported(pki):
    """Only urn: values are exempt: a broken http URI in a SAN is an error."""
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier("http//bad uri")])
    device = pki.device(pki.device_builder().add_extension(san, critical=False))
    codes = {f.code for f in lint.lint_certificate(device, _der(pki.issuing))}
    assert "pkix.invalid_uri_syntax" in codes


# --------------------------------------------------------------------------- require_clean


def test_require_clean_thresholds():
    notice = Finding("NOTICE", "pkix.a", "", "certificate")
    warning = Finding("WARNING", "pkix.b", "why", "certificate.tbsCertificate")
    error = Finding("ERROR", "pkix.c", "", "issuer:certificate.tbsCertificate.subject")

    require_clean([])
    require_clean([notice])
    require_clean([notice, warning], threshold="ERROR")
    with pytest.raises(LintError) as info:
        require_clean([notice, warning, error])
    assert info.value.findings == (warning, error)
    assert str(info.value) == (
        "lint failed: WARNING pkix.b at certificate.tbsCertificate; "
        "ERROR pkix.c at issuer:certificate.tbsCertificate.subject"
    )
    with pytest.raises(LintError):
        require_clean([notice], threshold="NOTICE")
    with pytest.raises(ValueError):
        require_clean([notice], threshold="SEVERE")
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.findings == info.value.findings and str(copy) == str(info.value)


# --------------------------------------------------------------------------- process-level


def test_validators_are_built_once():
    assert lint._cert_validator() is lint._cert_validator()
    assert lint._chain_validators() is lint._chain_validators()
    assert lint._crl_validator() is lint._crl_validator()
    assert lint._ocsp_validator() is lint._ocsp_validator()


def test_concurrent_calls_agree(pki):
    good = pki.device()
    bad = pki.device(pki.device_builder(skip=(x509.AuthorityKeyIdentifier,)))
    issuer = _der(pki.issuing)
    expected = {c: lint.lint_certificate(c, issuer) for c in (good, bad)}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = [(c, pool.submit(lint.lint_certificate, c, issuer)) for c in [good, bad] * 20]
        for cert, job in jobs:
            assert job.result() == expected[cert]


def test_lint_module_is_pure():
    code = (
        "import sys, device_ca.ca.lint as l\n"
        "l.lint_crl(b'0'); l.lint_certificate(b'0'); l._cert_validator(); l._chain_validators()\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('flask', 'sqlmodel', 'sqlalchemy', 'pkcs11')]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)


def test_lint_time_per_certificate(pki, capsys):
    device, issuer = pki.device(), _der(pki.issuing)
    lint.lint_certificate(device, issuer)  # build the validators outside the timing
    n = 40
    timings = {}
    for label, args in (("without issuer", (device,)), ("with issuer", (device, issuer))):
        start = time.perf_counter()
        for _ in range(n):
            lint.lint_certificate(*args)
        timings[label] = (time.perf_counter() - start) / n * 1000
    with capsys.disabled():
        print(
            "\nlint_certificate per call: "
            + ", ".join(f"{label} {ms:.1f} ms" for label, ms in timings.items())
        )


# --------------------------------------------------------------------------- CLI parity


def _cli(tool: str, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"{tool} not on PATH: pip install pkilint")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def _cli_findings(proc: subprocess.CompletedProcess) -> list[tuple[str, str, str]]:
    return [
        (d["severity"], d["code"], r["node_path"])
        for r in json.loads(proc.stdout)["results"]
        for d in r["finding_descriptions"]
    ]


def _inproc(findings: list[Finding], at_least: str = "WARNING") -> list[tuple[str, str, str]]:
    rank = lint.SEVERITIES.index(at_least)
    return [
        (f.severity, f.code, f.node.removeprefix("issuer:"))
        for f in findings
        if lint.SEVERITIES.index(f.severity) <= rank
    ]


@pytest.mark.integration
def test_matches_pkilint_cli(pki, tmp_path):
    cases = {
        "good": pki.device(),
        "no-aki": pki.device(pki.device_builder(skip=(x509.AuthorityKeyIdentifier,))),
        "zero-serial": _resign_tbs(pki.device(), pki.issuing_key, serial_number=0),
    }
    for label, der in cases.items():
        pem = tmp_path / f"{label}.pem"
        pem.write_bytes(_pem(der))
        findings = lint.lint_certificate(der)
        expected = _inproc(findings)
        assert (label == "good") == (expected == []), label

        counted = _cli("lint_pkix_cert", "lint", "-s", "WARNING", str(pem))
        assert counted.returncode == len(expected), (label, counted.stdout)
        as_json = _cli("lint_pkix_cert", "lint", "-s", "NOTICE", "-f", "JSON", str(pem))
        assert _cli_findings(as_json) == _inproc(findings, "NOTICE"), label


@pytest.mark.integration
def test_matches_pkilint_cli_chain_crl_ocsp(pki, tmp_path):
    device = pki.device()
    device_pem = tmp_path / "device.pem"
    device_pem.write_bytes(_pem(device))
    single = lint.lint_certificate(device)
    for label, issuer_der in (("issuing", _der(pki.issuing)), ("root", _der(pki.root))):
        issuer_pem = tmp_path / f"{label}.pem"
        issuer_pem.write_bytes(_pem(issuer_der))
        chain_only = [f for f in lint.lint_certificate(device, issuer_der) if f not in single]
        assert (label == "issuing") == (chain_only == []), label
        args = ("lint_pkix_signer_signee_cert_chain", "lint", str(issuer_pem), str(device_pem))
        counted = _cli(*args[:2], "-s", "WARNING", *args[2:])
        assert counted.returncode == len(_inproc(chain_only)), (label, counted.stdout)
        as_json = _cli(*args[:2], "-s", "NOTICE", "-f", "JSON", *args[2:])
        assert _cli_findings(as_json) == _inproc(chain_only, "NOTICE"), label

    for label, crl_der in (("good", _crl(pki)), ("no-number", _crl(pki, crl_number=None))):
        path = tmp_path / f"{label}.crl"
        path.write_bytes(crl_der)
        proc = _cli("lint_crl", "lint", "-t", "CRL", "-p", "PKIX", "-s", "NOTICE", "-f", "JSON",
                    str(path))
        assert _cli_findings(proc) == _inproc(lint.lint_crl(crl_der), "NOTICE"), label

    parsed = x509.load_der_x509_certificate(device)
    for label, resp in (
        ("good", _ocsp_response(pki, parsed)),
        ("negative", _ocsp_response(pki, parsed, next_update=NOW - dt.timedelta(hours=1))),
    ):
        path = tmp_path / f"{label}.ocsp"
        path.write_bytes(resp)
        proc = _cli("lint_ocsp_response", "lint", "-s", "NOTICE", "-f", "JSON", str(path))
        assert _cli_findings(proc) == _inproc(lint.lint_ocsp_response(resp), "NOTICE"), label
