"""Test helpers: software CA keys and CSRs made with cryptography (unit tests) or openssl."""
from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from device_ca.ca.authority import CaProfile, build_issuing, build_root
from device_ca.ca.clock import FixedClock

T0 = dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.timezone.utc)


def software_ca(clock=None, key_type: str = "ec:P-256"):
    """(root cert, root key, issuing cert, issuing key) with software keys."""
    clock = clock or FixedClock(T0)
    new = (lambda: ec.generate_private_key(ec.SECP256R1())) if key_type == "ec:P-256" else \
          (lambda: ec.generate_private_key(ec.SECP384R1())) if key_type == "ec:P-384" else \
          (lambda: rsa.generate_private_key(65537, 3072))
    root_key, issuing_key = new(), new()
    profile = CaProfile(organization="Test CA")
    root = build_root(root_key, profile, clock)
    issuing = build_issuing(root, root_key, issuing_key.public_key(), profile, clock)
    return root, root_key, issuing, issuing_key


def make_csr(cn: str | None = "lock-101", *, key=None, ou: str = "door-lock", o: str = "BuildingCo",
             sans=(), extensions=(), hash_algorithm=None, encoding=Encoding.PEM) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    attrs = []
    if cn is not None:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                 x509.NameAttribute(NameOID.ORGANIZATION_NAME, o)]
    # RFC 4514 order is most specific first; x509.Name wants least specific first.
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(list(reversed(attrs))))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    csr = builder.sign(key, hash_algorithm or hashes.SHA256())
    return csr.public_bytes(encoding)


def flip_signature_bit(der: bytes) -> bytes:
    """Flip one bit near the end (inside the signature BIT STRING)."""
    data = bytearray(der)
    data[-3] ^= 0x01
    return bytes(data)


class CountingSigner(ec.EllipticCurvePrivateKey):
    """Wraps a software EC key like an HSM key object: counts signatures and, with ``corrupt``,
    flips a bit of each one, as a faulty token might return them."""

    def __init__(self, key, corrupt: bool = False):
        self.key, self.corrupt, self.calls = key, corrupt, 0

    def public_key(self):
        return self.key.public_key()

    @property
    def curve(self):
        return self.key.curve

    @property
    def key_size(self):
        return self.key.key_size

    def exchange(self, *a):
        raise NotImplementedError

    def private_bytes(self, *a):
        raise NotImplementedError

    def private_numbers(self):
        raise NotImplementedError

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def sign(self, data, algorithm):
        self.calls += 1
        signature = self.key.sign(data, algorithm)
        return signature[:-1] + bytes([signature[-1] ^ 0x01]) if self.corrupt else signature


def CorruptingSigner(key) -> CountingSigner:  # noqa: N802 - reads like the class it returns
    return CountingSigner(key, corrupt=True)
