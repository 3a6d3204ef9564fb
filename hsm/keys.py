"""Token-resident private keys that ``cryptography``'s builders accept.

The classes subclass ``ec.EllipticCurvePrivateKey`` and ``rsa.RSAPrivateKey``;
``sign()`` sends the work to the token through its Token (one session, one lock),
so CertificateBuilder, CertificateRevocationListBuilder and OCSPResponseBuilder
sign with a key that never leaves the token.

Mechanisms (PKCS#11 v2.40 Current Mechanisms Specification):
* §2.3 elliptic curve: CKM_EC_KEY_PAIR_GEN; CKM_ECDSA signs a digest made here
  (SoftHSM 2.6.1 has no CKM_ECDSA_SHA256) and returns r||s, DER-encoded below. A token
  without CKM_ECDSA but with CKM_ECDSA_SHAx is given the data to hash itself.
* §2.1 RSA: CKM_RSA_PKCS_KEY_PAIR_GEN; CKM_SHAx_RSA_PKCS and CKM_SHAx_RSA_PKCS_PSS
  hash on the token; a Prehashed digest, or a token without the combined mechanism
  (openCryptoki 3.8's soft token has no CKM_SHA256_RSA_PKCS), goes through CKM_RSA_PKCS
  (with the DigestInfo prefix of RFC 8017 §9.2) or CKM_RSA_PKCS_PSS.
Which of them a token offers is read once per session (C_GetMechanismList, Base §5.5) and
the choice is made per signature from that list (``ec_plan``, ``rsa_plan``); an empty list
(a module that reports none) means "try the preferred mechanism".
Key attributes (PKCS#11 v2.40 Base §4.8 public keys, §4.9 private keys): the public
point or modulus is read once from the public key object (CKA_EC_POINT, CKA_MODULUS,
CKA_PUBLIC_EXPONENT) and kept as a ``cryptography`` public key.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pkcs11 import MGF, Mechanism

from hsm.errors import HsmError

if TYPE_CHECKING:
    from hsm.token import Token

NEVER_LEAVES = "private key material never leaves the token"

# spec -> (key type, curve or modulus bits)
KEY_SPECS: dict[str, tuple[str, Any]] = {
    "ec:P-256": ("ec", ec.SECP256R1()),
    "ec:P-384": ("ec", ec.SECP384R1()),
    "rsa:2048": ("rsa", 2048),
    "rsa:3072": ("rsa", 3072),
    "rsa:4096": ("rsa", 4096),
}

# DER of the namedCurve OID (CKA_EC_PARAMS) for each curve this package reads.
_CURVE_PARAMS: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("06052b81040022"): ec.SECP384R1(),
    bytes.fromhex("06052b81040023"): ec.SECP521R1(),
}

# hash name -> (CKM_SHAx_RSA_PKCS, CKM_SHAx_RSA_PKCS_PSS, CKM_SHAx, CKG_MGF1_SHAx, DigestInfo prefix)
_RSA_HASHES: dict[str, tuple[Mechanism, Mechanism, Mechanism, MGF, bytes]] = {
    "sha224": (Mechanism.SHA224_RSA_PKCS, Mechanism.SHA224_RSA_PKCS_PSS, Mechanism.SHA224, MGF.SHA224,
               bytes.fromhex("302d300d06096086480165030402040500041c")),
    "sha256": (Mechanism.SHA256_RSA_PKCS, Mechanism.SHA256_RSA_PKCS_PSS, Mechanism.SHA256, MGF.SHA256,
               bytes.fromhex("3031300d060960864801650304020105000420")),
    "sha384": (Mechanism.SHA384_RSA_PKCS, Mechanism.SHA384_RSA_PKCS_PSS, Mechanism.SHA384, MGF.SHA384,
               bytes.fromhex("3041300d060960864801650304020205000430")),
    "sha512": (Mechanism.SHA512_RSA_PKCS, Mechanism.SHA512_RSA_PKCS_PSS, Mechanism.SHA512, MGF.SHA512,
               bytes.fromhex("3051300d060960864801650304020305000440")),
}


# hash name -> CKM_ECDSA_SHAx (PKCS#11 v2.40 Current Mechanisms §2.3.7)
_ECDSA_HASHES: dict[str, Mechanism] = {
    "sha224": Mechanism.ECDSA_SHA224, "sha256": Mechanism.ECDSA_SHA256,
    "sha384": Mechanism.ECDSA_SHA384, "sha512": Mechanism.ECDSA_SHA512,
}

# key spec family -> the key pair generation mechanism
KEYGEN_MECHANISMS: dict[str, Mechanism] = {"ec": Mechanism.EC_KEY_PAIR_GEN, "rsa": Mechanism.RSA_PKCS_KEY_PAIR_GEN}


def mechanism_name(mechanism: int) -> str:
    """CKM_* name of a mechanism number (hex when python-pkcs11 does not know it)."""
    try:
        return "CKM_" + Mechanism(mechanism).name
    except ValueError:
        return f"CKM 0x{int(mechanism):08X}"


def offered(mechanisms: frozenset[int], mechanism: Mechanism) -> bool:
    return not mechanisms or int(mechanism) in mechanisms


def ec_plan(mechanisms: frozenset[int], data: bytes,
            algorithm: hashes.HashAlgorithm | Prehashed) -> tuple[Mechanism, None, bytes]:
    """(mechanism, parameter, what to give C_Sign) for an ECDSA signature over ``data``."""
    prehashed = isinstance(algorithm, Prehashed)
    name = algorithm._algorithm.name if prehashed else algorithm.name
    if offered(mechanisms, Mechanism.ECDSA):
        return Mechanism.ECDSA, None, _digest(data, algorithm)
    combined = _ECDSA_HASHES.get(name)
    if combined is not None and int(combined) in mechanisms and not prehashed:
        return combined, None, bytes(data)
    wanted = "CKM_ECDSA" + (f" or {mechanism_name(combined)}" if combined is not None else "")
    raise HsmError("key", f"the token offers no mechanism for ECDSA with {name.upper()} (needs {wanted})")


def ec_params_for(curve: ec.EllipticCurve) -> bytes:
    """CKA_EC_PARAMS (DER namedCurve OID) for ``curve``."""
    for params, known in _CURVE_PARAMS.items():
        if known.name == curve.name:
            return params
    raise HsmError("key", f"unsupported curve {curve.name}")


def ec_public_key(params: bytes, point: bytes) -> ec.EllipticCurvePublicKey:
    """Public key from CKA_EC_PARAMS and CKA_EC_POINT (DER OCTET STRING, or a bare point)."""
    curve = _CURVE_PARAMS.get(bytes(params))
    if curve is None:
        raise HsmError("key", "the token's EC key uses a curve this CA does not support")
    size = (curve.key_size + 7) // 8
    point = bytes(point)
    if not (len(point) == 2 * size + 1 and point[0] == 4):
        point = _der_octet_string(point)  # PKCS#11 v2.40 says DER-encoded OCTET STRING
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)


def rsa_public_key(modulus: bytes, exponent: bytes) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big")).public_key()


def _der_octet_string(data: bytes) -> bytes:
    if len(data) < 2 or data[0] != 0x04:
        raise HsmError("key", "malformed CKA_EC_POINT on the token")
    length, offset = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        length, offset = int.from_bytes(data[2:2 + count], "big"), 2 + count
    if offset + length != len(data):
        raise HsmError("key", "malformed CKA_EC_POINT on the token")
    return data[offset:]


def _digest(data: bytes, algorithm: hashes.HashAlgorithm | Prehashed) -> bytes:
    if isinstance(algorithm, Prehashed):
        if len(data) != algorithm.digest_size:
            raise ValueError("the prehashed digest does not match the digest size of the algorithm")
        return bytes(data)
    hasher = hashes.Hash(algorithm)
    hasher.update(data)
    return hasher.finalize()


def rsa_plan(mechanisms: frozenset[int], combined: Mechanism, raw: Mechanism, param: Any, data: bytes,
             algorithm: hashes.HashAlgorithm | Prehashed, prefix: bytes,
             prehashed: bool) -> tuple[Mechanism, Any, bytes]:
    """The combined hash-and-sign mechanism when the token offers it, else the digest made here and
    signed with the raw mechanism (PKCS #1 v1.5 with its DigestInfo prefix, or PSS)."""
    if not prehashed and offered(mechanisms, combined):
        return combined, param, bytes(data)
    if offered(mechanisms, raw):
        return raw, param, prefix + _digest(data, algorithm)
    raise HsmError("key", f"the token offers neither {mechanism_name(combined)} nor {mechanism_name(raw)}")


def describe_plans(mechanisms: frozenset[int]) -> dict[str, str]:
    """For the signatures device-ca makes (SHA-256; SHA-384 with P-384): the mechanism each goes through."""
    plans: dict[str, str] = {}

    def explain(name: str, choose) -> None:
        try:
            mechanism, _, payload = choose()
        except HsmError as exc:
            plans[name] = f"unavailable ({exc.message})"
            return
        made_here = "digest made here" if payload != b"x" else "hashed on the token"
        plans[name] = f"{mechanism_name(mechanism)} ({made_here})"

    for label, algorithm in (("ECDSA SHA-256", hashes.SHA256()), ("ECDSA SHA-384", hashes.SHA384())):
        explain(label, lambda algorithm=algorithm: ec_plan(mechanisms, b"x", algorithm))
    sha = _RSA_HASHES["sha256"]
    explain("RSA PKCS#1 v1.5 SHA-256", lambda: rsa_plan(mechanisms, sha[0], Mechanism.RSA_PKCS, None, b"x",
                                                           hashes.SHA256(), sha[4], False))
    explain("RSA-PSS SHA-256", lambda: rsa_plan(mechanisms, sha[1], Mechanism.RSA_PKCS_PSS, None, b"x",
                                                   hashes.SHA256(), b"", False))
    return plans


class Pkcs11PrivateKey:
    """Common part of the token-resident keys: a label, a Token, a cached public key."""

    def __init__(self, token: "Token", label: str, public: Any):
        self._token = token
        self.label = label
        self._public = public

    @property
    def token(self) -> "Token":
        return self._token

    def public_key(self) -> Any:
        return self._public

    def private_numbers(self) -> NoReturn:
        raise HsmError("key", NEVER_LEAVES)

    def private_bytes(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise HsmError("key", NEVER_LEAVES)

    def __copy__(self) -> "Pkcs11PrivateKey":
        return self  # a reference to a token object; nothing to copy

    def __deepcopy__(self, memo: dict) -> "Pkcs11PrivateKey":
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError("a PKCS#11 key cannot be pickled; open the token in the other process")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} label={self.label!r} token={self._token.token_label!r}>"


class Pkcs11EcPrivateKey(Pkcs11PrivateKey, ec.EllipticCurvePrivateKey):
    """EC private key on the token: sign() hashes here and signs the digest with CKM_ECDSA."""

    _public: ec.EllipticCurvePublicKey

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> NoReturn:
        raise HsmError("key", NEVER_LEAVES)

    def plan(self, signature_algorithm: ec.EllipticCurveSignatureAlgorithm):
        """A function (mechanisms, data) -> (mechanism, parameter, what to give C_Sign): the choice
        sign() makes. Refuses unsupported algorithms before anything reaches the token; it does not
        use the token itself (benchmarks time C_Sign with exactly this choice)."""
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm("only ECDSA signatures are supported")
        if getattr(signature_algorithm, "deterministic_signing", False):
            raise UnsupportedAlgorithm("deterministic ECDSA (RFC 6979) is not available through PKCS#11")
        algorithm = signature_algorithm.algorithm
        return lambda mechanisms, data: ec_plan(mechanisms, data, algorithm)

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        plan = self.plan(signature_algorithm)
        raw = self._token._sign(self.label, lambda mechanisms: plan(mechanisms, data))
        half = len(raw) // 2
        if half == 0 or len(raw) != 2 * half:
            raise HsmError("device", f"token returned a malformed ECDSA signature ({len(raw)} bytes)")
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


class Pkcs11RsaPrivateKey(Pkcs11PrivateKey, rsa.RSAPrivateKey):
    """RSA private key on the token: PKCS #1 v1.5 or PSS with SHA-224/256/384/512."""

    _public: rsa.RSAPublicKey

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def decrypt(self, ciphertext: bytes, padding: rsa_padding.AsymmetricPadding) -> NoReturn:
        raise HsmError("key", NEVER_LEAVES)

    def sign(self, data: bytes, padding: rsa_padding.AsymmetricPadding,
             algorithm: hashes.HashAlgorithm | Prehashed) -> bytes:
        plan = self.plan(padding, algorithm)
        return self._token._sign(self.label, lambda mechanisms: plan(mechanisms, data))

    def plan(self, padding: rsa_padding.AsymmetricPadding, algorithm: hashes.HashAlgorithm | Prehashed):
        """A function (mechanisms, data) -> (mechanism, parameter, what to give C_Sign): the choice
        sign() makes. Refuses unsupported paddings and hashes before anything reaches the token; it
        does not use the token itself (benchmarks time C_Sign with exactly this choice)."""
        prehashed = isinstance(algorithm, Prehashed)
        name = algorithm._algorithm.name if prehashed else algorithm.name
        if name not in _RSA_HASHES:
            raise UnsupportedAlgorithm(f"hash {name} is not supported for RSA signatures here")
        with_hash, pss_with_hash, hash_mech, _, prefix = _RSA_HASHES[name]
        if isinstance(padding, rsa_padding.PKCS1v15):
            return lambda mechanisms, data: rsa_plan(mechanisms, with_hash, Mechanism.RSA_PKCS, None, data,
                                                     algorithm, prefix, prehashed)
        if isinstance(padding, rsa_padding.PSS):
            mgf = padding.mgf
            if not isinstance(mgf, rsa_padding.MGF1) or mgf._algorithm.name not in _RSA_HASHES:
                raise UnsupportedAlgorithm("PSS needs MGF1 with SHA-224/256/384/512")
            param = (hash_mech, _RSA_HASHES[mgf._algorithm.name][3], self._salt_length(padding, algorithm))
            return lambda mechanisms, data: rsa_plan(mechanisms, pss_with_hash, Mechanism.RSA_PKCS_PSS, param, data,
                                                     algorithm, b"", prehashed)
        raise UnsupportedAlgorithm(f"RSA padding {padding.name} is not supported")

    def _salt_length(self, padding: rsa_padding.PSS, algorithm: hashes.HashAlgorithm | Prehashed) -> int:
        salt = padding._salt_length
        if isinstance(salt, int):
            return salt
        if isinstance(salt, rsa_padding._DigestLength):
            return algorithm.digest_size
        if isinstance(salt, rsa_padding._MaxLength):
            return (self.key_size + 6) // 8 - algorithm.digest_size - 2
        raise ValueError("PSS salt length AUTO is only valid for verification")
