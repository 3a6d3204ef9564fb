"""PKCS#10 certification requests (RFC 2986): strict parsing and proof of possession.

A request is accepted only if it is exactly one CSR (PEM or DER, nothing before or after),
its self-signature verifies (``cryptography`` loads a CSR with a bad signature, so the check
is explicit), its key type is one the code allows and its signature hash is not SHA-1 or MD5.
Requested CA powers (basicConstraints cA, keyUsage keyCertSign/cRLSign) are refused outright:
a device never gets them, and asking for them is a sign of a misconfigured or hostile client.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID

from device_ca.errors import malformed, rejected

# Hard ceilings: a policy may allow a subset of these, never more.
ALLOWED_KEY_TYPES = frozenset({"ec:P-256", "ec:P-384", "ec:P-521", "rsa:2048", "rsa:3072", "rsa:4096"})
ALLOWED_SIGNATURE_HASHES = frozenset({"sha256", "sha384", "sha512"})
MAX_CSR_BYTES = 64 * 1024

_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_PEM = re.compile(
    rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----\r?\n(?P<body>[A-Za-z0-9+/=\r\n]+?)-----END (NEW )?CERTIFICATE REQUEST-----"
)


@dataclass(frozen=True)
class CsrInfo:
    der: bytes
    public_key: object
    key_type: str
    subject: x509.Name
    sans: tuple[x509.GeneralName, ...]


def key_type_of(public_key: object) -> str:
    """The policy name of a public key's type, e.g. ``ec:P-256`` or ``rsa:3072``."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ec:" + _CURVES.get(public_key.curve.name, public_key.curve.name)
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa:{public_key.key_size}"
    return type(public_key).__name__


def decode(data: bytes) -> bytes:
    """Return the DER of the single CSR in ``data`` (PEM or DER)."""
    if not data:
        raise malformed("empty CSR")
    if len(data) > MAX_CSR_BYTES:
        raise malformed(f"CSR larger than {MAX_CSR_BYTES} bytes")
    if data.lstrip().startswith(b"-----BEGIN"):
        blocks = list(_PEM.finditer(data))
        if len(blocks) != 1:
            raise malformed(f"expected exactly one PEM CERTIFICATE REQUEST block, found {len(blocks)}")
        outside = data[: blocks[0].start()] + data[blocks[0].end():]
        if outside.strip():
            raise malformed("unexpected data around the PEM CERTIFICATE REQUEST block")
        try:
            return base64.b64decode(b"".join(blocks[0]["body"].split()), validate=True)
        except binascii.Error:
            raise malformed("PEM CERTIFICATE REQUEST block is not valid base64") from None
    return data


def load(data: bytes) -> CsrInfo:
    """Parse and check a CSR; raise DeviceCAError (MALFORMED or POLICY_REJECTED) if unusable."""
    der = decode(data)
    try:
        csr = x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion) as exc:     # InvalidVersion is no ValueError (found by fuzzing)
        raise malformed(f"not a PKCS#10 certificate request ({_short(exc)})") from None
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise rejected("CSR public key type is not supported") from None
    key_type = key_type_of(public_key)
    if key_type not in ALLOWED_KEY_TYPES:
        raise rejected(f"key type {key_type} is not allowed (allowed: {', '.join(sorted(ALLOWED_KEY_TYPES))})")
    try:
        hash_algorithm = csr.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise rejected("CSR signature algorithm is not supported") from None
    if hash_algorithm is None or hash_algorithm.name not in ALLOWED_SIGNATURE_HASHES:
        name = hash_algorithm.name if hash_algorithm else "none"
        raise rejected(f"CSR signature hash {name} is not allowed (use SHA-256 or stronger)")
    if not csr.is_signature_valid:
        raise malformed("CSR signature does not verify (proof of possession failed)")
    try:
        extensions = csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise malformed(f"CSR extension request is malformed ({_short(exc)})") from None
    _refuse_ca_powers(extensions)
    try:
        sans = tuple(extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value)
    except x509.ExtensionNotFound:
        sans = ()
    return CsrInfo(der=der, public_key=public_key, key_type=key_type, subject=csr.subject, sans=sans)


def _refuse_ca_powers(extensions: x509.Extensions) -> None:
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise rejected("CSR requests basicConstraints CA:TRUE; device certificates are never CAs")
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            raise rejected("CSR requests keyCertSign or cRLSign; device certificates never sign certificates or CRLs")


def public_key_der(public_key: object) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def hash_for_key_type(key_type: str) -> hashes.HashAlgorithm:
    """The signature hash a CA key of this type signs with."""
    return {"ec:P-384": hashes.SHA384(), "ec:P-521": hashes.SHA512()}.get(key_type, hashes.SHA256())


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
