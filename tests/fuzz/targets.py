"""Fuzz targets: every parser of outside input, fed arbitrary bytes. Each may refuse its input
only with the error kinds it documents; anything else raised (or a hang) is a finding.

    csr          PKCS#10 CSR, PEM or DER (ca/csr.load): MALFORMED or POLICY_REJECTED
    est_body     an EST request body, base64 of one DER value (web/est_codec.decode_base64_body): MALFORMED
    ocsp_request a DER OCSPRequest (ca/ocsp.parse_request): MalformedRequest
    ocsp_get     the path segment of GET /ocsp/... then its request (parse_get_path, parse_request)
    batch        a batch as JSON lines (ra/bulk.iter_jsonl): never raises (a bad line is a failed item)
    policy       a policy file, TOML (policy/model.load_policy): PolicyError (MALFORMED)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from device_ca.ca import csr as csrs
from device_ca.ca import ocsp
from device_ca.errors import DeviceCAError, Kind
from device_ca.policy.model import PolicyError, load_policy
from device_ca.ra.bulk import iter_jsonl
from device_ca.web import est_codec

_KINDS = {Kind.MALFORMED, Kind.POLICY_REJECTED}


def _refused(exc: DeviceCAError, kinds=frozenset({Kind.MALFORMED})) -> None:
    if exc.kind not in kinds:
        raise AssertionError(f"undocumented error kind {exc.kind}: {exc.detail}") from exc


def csr(data: bytes) -> None:
    try:
        csrs.load(data)
    except DeviceCAError as exc:
        _refused(exc, _KINDS)


def est_body(data: bytes) -> None:
    try:
        est_codec.decode_base64_body(data)
    except DeviceCAError as exc:
        _refused(exc)


def ocsp_request(data: bytes) -> None:
    try:
        ocsp.parse_request(data)
    except ocsp.MalformedRequest:
        pass


def ocsp_get(data: bytes) -> None:
    try:
        ocsp.parse_request(ocsp.parse_get_path(data.decode("latin-1")))
    except ocsp.MalformedRequest:
        pass


def batch(data: bytes) -> None:
    for item in iter_jsonl(data.decode("utf-8", "replace").splitlines()):
        assert isinstance(item.device_id, str)


_POLICY_DIR = Path(tempfile.mkdtemp(prefix="fuzz-policy-"))


def policy(data: bytes) -> None:
    path = _POLICY_DIR / "fuzzed.toml"
    with open(path, "wb") as f:
        f.write(data)
    try:
        load_policy(path)
    except PolicyError as exc:
        _refused(exc)


TARGETS = {"csr": csr, "est_body": est_body, "ocsp_request": ocsp_request, "ocsp_get": ocsp_get, "batch": batch,
           "policy": policy}
os.environ.setdefault("DEVICE_CA_FUZZ", "1")
