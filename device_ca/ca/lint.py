"""Lint certificates, CRLs and OCSP responses with pkilint, in-process.

The checks are exactly those of pkilint's command-line linters:

- ``lint_certificate``: the RFC 5280 profile of ``lint_pkix_cert lint``; with an issuer
  also the issuer/subject checks of ``lint_pkix_signer_signee_cert_chain lint`` (name
  chaining, AKI = issuer SKI, policy chaining, signature verification).
- ``lint_crl``: ``lint_crl lint -t CRL -p PKIX`` (RFC 5280 section 5).
- ``lint_ocsp_response``: ``lint_ocsp_response lint`` (RFC 6960).

pkilint is imported on the first call (about 0.25 s) and each validator tree is built once
per process; the trees keep no per-document state, so calls share them, also across threads.
pkilint does not check OCSP or CRL signatures, nor nonces.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

SEVERITIES: tuple[str, ...] = ("FATAL", "ERROR", "WARNING", "NOTICE", "INFO")
_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
_REPORTED_DOWN_TO = "NOTICE"

IGNORED_CODES: frozenset[str] = frozenset()

# pkilint 0.13.3 wrongly rejects urn: URIs (RFC 9039 device URNs). The finding is dropped only
# when the URI it is about starts with "urn:", so a malformed CRL DP or AIA URI is still reported.
URN_FALSE_POSITIVE = "pkix.invalid_uri_syntax"

LOAD_FAILED = "device_ca.lint.document_load_failed"
"""Code of the FATAL finding returned when pkilint cannot even decode the document."""


@dataclass(frozen=True)
class Finding:
    severity: str
    code: str
    message: str
    node: str

    def __str__(self) -> str:
        return f"{self.severity} {self.code} at {self.node}"


class LintError(Exception):
    """Findings at or above the threshold given to :func:`require_clean`."""

    def __init__(self, findings: Iterable[Finding]):
        self.findings: tuple[Finding, ...] = tuple(findings)
        super().__init__("lint failed: " + "; ".join(str(f) for f in self.findings))

    def __reduce__(self):
        return type(self), (self.findings,)


def lint_certificate(cert_der: bytes, issuer_der: bytes | None = None) -> list[Finding]:
    """RFC 5280 findings for ``cert_der``, plus issuer/subject findings if ``issuer_der``.

    Chain findings on nodes of the issuer certificate carry an ``issuer:`` prefix on the node
    path; chain findings that repeat a single-certificate finding are reported once. The chain
    checks verify the signature with the issuer's key, so a copy signed by a throw-away key
    gets ERROR ``pkix.signature_verification_failed`` when linted with its issuer.
    """
    from pkilint import loader

    try:
        cert = loader.load_der_certificate(cert_der, "certificate", "certificate")
    except ValueError as e:
        return [_load_failed("certificate", e)]
    findings = _findings(_cert_validator().validate(cert.root))
    if issuer_der is None:
        return findings

    collection: dict[str, Any] = {}
    try:
        issuer = loader.load_der_certificate(issuer_der, "issuer", "issuer", collection)
    except ValueError as e:
        return findings + [_load_failed("issuer", e)]
    collection["issuer"] = issuer
    subject = loader.load_der_certificate(cert_der, "subject", "subject", collection)
    collection["subject"] = subject

    decoders, issuer_checks, subject_checks = _chain_validators()
    results = decoders.validate(issuer.root)
    results += decoders.validate(subject.root)
    results += issuer_checks.validate(issuer.root)
    results += subject_checks.validate(subject.root)
    seen = set(findings)
    for finding in _findings(results, issuer_doc=issuer):
        if finding not in seen:
            seen.add(finding)
            findings.append(finding)
    return findings


def lint_crl(crl_der: bytes) -> list[Finding]:
    """Findings of ``lint_crl lint -t CRL -p PKIX``."""
    from pkilint import loader

    try:
        crl = loader.load_der_crl(crl_der, "crl", "crl")
    except ValueError as e:
        return [_load_failed("crl", e)]
    return _findings(_crl_validator().validate(crl.root))


def lint_ocsp_response(resp_der: bytes) -> list[Finding]:
    """Findings of ``lint_ocsp_response lint``."""
    from pkilint import loader

    try:
        resp = loader.load_der_ocsp_response(resp_der, "ocsp_response", "ocsp_response")
    except ValueError as e:
        return [_load_failed("ocsp_response", e)]
    return _findings(_ocsp_validator().validate(resp.root))


def require_clean(findings: Iterable[Finding], threshold: str = "WARNING") -> None:
    """Raise :class:`LintError` if any finding is at least as severe as ``threshold``."""
    if threshold not in _RANK:
        raise ValueError(f"unknown severity {threshold!r}; expected one of {SEVERITIES}")
    limit = _RANK[threshold]
    bad = [f for f in findings if _RANK.get(f.severity, 0) <= limit]
    if bad:
        raise LintError(bad)


def _findings(results: Iterable[Any], issuer_doc: Any = None) -> list[Finding]:
    limit = _RANK[_REPORTED_DOWN_TO]
    out = []
    for result in results:
        node = result.node.path
        if issuer_doc is not None and result.node.document is issuer_doc:
            node = f"issuer:{node}"
        for description in result.finding_descriptions:
            severity = description.finding.severity.name
            code = description.finding.code
            if _RANK.get(severity, len(SEVERITIES)) > limit or code in IGNORED_CODES:
                continue
            if code == URN_FALSE_POSITIVE and _is_urn(result.node):
                continue
            out.append(Finding(severity, code, description.message or "", node))
    return out


def preload() -> None:
    """Import pkilint and build the certificate validators now (about a second of CPU), e.g. in a
    server's parent process so that every forked worker inherits them."""
    _cert_validator()
    _chain_validators()


def _is_urn(node: Any) -> bool:
    try:
        return str(node.pdu).lower().startswith("urn:")
    except Exception:  # noqa: BLE001 - a node without a printable value is not a URN
        return False


def _once(build: Callable[[], Any]) -> Callable[[], Any]:
    """Build the value on first use, once per process even with concurrent first calls."""
    lock = threading.Lock()
    built: list[Any] = []

    @functools.wraps(build)
    def get() -> Any:
        if not built:
            with lock:
                if not built:
                    built.append(build())
        return built[0]

    return get


def _load_failed(what: str, error: Exception) -> Finding:
    return Finding("FATAL", LOAD_FAILED, f"cannot decode {what}: {error}", "")


@_once
def _cert_validator() -> Any:
    """The validator tree of ``pkilint/bin/lint_pkix_cert.py``."""
    from pkilint.pkix import certificate, extension, name

    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


@_once
def _chain_validators() -> tuple[Any, Any, Any]:
    """The decoder, issuer and subject trees of ``lint_pkix_signer_signee_cert_chain.py``."""
    from pkilint.bin import lint_pkix_signer_signee_cert_chain as chain

    return (
        chain.create_decoder_validation_container(),
        chain.create_issuer_validation_container(),
        chain.create_subject_validation_container(),
    )


@_once
def _crl_validator() -> Any:
    """The validator tree of ``pkilint/bin/lint_crl.py`` with ``-t CRL -p PKIX``."""
    from pkilint import pkix
    from pkilint.pkix import crl, extension, name

    return crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            crl.create_issuer_validator_container([]),
            crl.create_validity_validator_container([]),
            crl.create_extensions_validator_container([]),
        ],
    )


@_once
def _ocsp_validator() -> Any:
    """The validator tree of ``pkilint/bin/lint_ocsp_response.py``."""
    from pkilint import pkix
    from pkilint.pkix import extension, name, ocsp

    return ocsp.create_pkix_ocsp_response_validator_container(
        [
            ocsp.create_response_decoder(),
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [],
    )


# The linted copy is signed by a throw-away key, so its signature cannot verify against the
# issuer; the real signature is verified after the token signs (Issuer.sign).
_PRE_ISSUANCE_EXPECTED = frozenset({"pkix.signature_verification_failed"})


def pkilint_gate(cert_der: bytes, issuer_der: bytes) -> None:
    """The pre-issuance lint gate: any finding at ERROR or above stops the signature
    (POLICY_REJECTED, nothing reserved, nothing signed)."""
    from device_ca.errors import DeviceCAError, Kind

    findings = [f for f in lint_certificate(cert_der, issuer_der) if f.code not in _PRE_ISSUANCE_EXPECTED]
    try:
        require_clean(findings, threshold="ERROR")
    except LintError as exc:
        raise DeviceCAError(Kind.POLICY_REJECTED, f"pre-issuance {exc}") from None


def pkilint_crl_gate(crl_der: bytes) -> None:
    """Lint a signed CRL before it is published: a finding at ERROR or above stops it."""
    from device_ca.errors import DeviceCAError, Kind

    try:
        require_clean(lint_crl(crl_der), threshold="ERROR")
    except LintError as exc:
        raise DeviceCAError(Kind.INTERNAL, f"CRL {exc}; nothing was published") from None
