"""The CA's token: the ``hsm`` package seen from device-ca, with the one translation of
``hsm.HsmError`` into ``DeviceCAError(HSM_UNAVAILABLE)``.

Everything above this module (ra/, the OCSP responder, the CRL publisher, the CLI) sees token
failures as error kinds; each edge maps the kind once (HTTP 503 + Retry-After, OCSP tryLater,
CLI exit 9). The signers handed out wrap the token's keys: they are the same ``cryptography`` key
types to the builders, and a failing signature becomes the same error kind.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

from cryptography.hazmat.primitives.asymmetric import ec, rsa

import hsm
from device_ca import metrics
from device_ca.errors import DeviceCAError, Kind


def unavailable(exc: hsm.HsmError, operation: str) -> DeviceCAError:
    """The token's failure in ``operation`` as the domain's error kind (the message is safe: hsm never
    puts a PIN in it), counted in device_ca_hsm_errors_total."""
    metrics.hsm_error(operation)
    return DeviceCAError(Kind.HSM_UNAVAILABLE, str(exc), cause=exc)


def about_a_key(exc: DeviceCAError) -> bool:
    """Whether the token refused because of one key (missing, ambiguous label), not as a whole."""
    return isinstance(exc.cause, hsm.HsmError) and exc.cause.reason == "key"


@contextlib.contextmanager
def translated(operation: str) -> Iterator[None]:
    """HsmError raised inside the block leaves it as DeviceCAError(HSM_UNAVAILABLE)."""
    try:
        yield
    except hsm.HsmError as exc:
        raise unavailable(exc, operation) from None


class CaToken:
    """The token, opened on first use in this process (never before a fork) and kept."""

    def __init__(self, config: Callable[[], hsm.TokenConfig]):
        self._config = config
        self._token: hsm.Token | None = None
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return self._config().token_label

    def _open(self) -> hsm.Token:
        token = self._token
        if token is None:
            with self._lock, translated("open"):
                if self._token is None:
                    self._token = hsm.open_token(self._config())
                token = self._token
        return token

    @property
    def opened(self) -> bool:
        return self._token is not None

    def ping(self) -> None:
        with translated("ping"):
            self._open().ping()

    def labels(self) -> list[str]:
        with translated("labels"):
            return self._open().labels()

    def find(self, label: str):
        """A signer for the private key ``label``, or None if the token has none."""
        with translated("find"):
            key = self._open().find_key(label)
        return None if key is None else signer(key)

    def signer(self, label: str):
        """The signer for ``label``; HSM_UNAVAILABLE when the key is not on the token."""
        key = self.find(label)
        if key is None:
            metrics.hsm_error("find")
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, f"key {label!r} not found on token {self.label!r}")
        return key

    def describe(self) -> dict:
        """``device-ca hsm info``: module, token, the mechanisms device-ca will use, the key objects and
        their attributes. Nothing secret: no PIN, no key value."""
        with translated("info"):
            token = self._open()
            return {"token": token.info(), "plans": token.plans(), "mechanisms": token.mechanisms(),
                    "objects": token.objects()}

    def can_generate(self, key_type: str) -> bool:
        """Whether the token offers the mechanism and key size to make ``key_type`` keys."""
        with translated("mechanisms"):
            return self._open().can_generate(key_type)

    def require(self, *key_types: str) -> None:
        """HSM_UNAVAILABLE naming the first of ``key_types`` the token cannot make (before any key is made)."""
        for key_type in key_types:
            with translated("mechanisms"):
                self._open().check_keygen(key_type)

    def generate(self, label: str, key_type: str):
        """A new non-extractable key pair on the token; its signer."""
        with translated("generate"):
            return signer(self._open().generate_key(label, key_type))


def signer(key):
    """``key`` (a token key) as a signer whose failures are error kinds."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return EcSigner(key)
    return RsaSigner(key)


class _Delegating:
    def __init__(self, key):
        self._key = key

    def public_key(self):
        return self._key.public_key()

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def private_numbers(self):
        return self._key.private_numbers()

    def private_bytes(self, *args, **kwargs):
        return self._key.private_bytes(*args, **kwargs)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._key!r})"


class EcSigner(_Delegating, ec.EllipticCurvePrivateKey):
    @property
    def curve(self) -> ec.EllipticCurve:
        return self._key.curve

    def exchange(self, algorithm, peer_public_key):
        return self._key.exchange(algorithm, peer_public_key)

    def sign(self, data: bytes, signature_algorithm) -> bytes:
        try:                          # not translated(): this is every signature's path
            return self._key.sign(data, signature_algorithm)
        except hsm.HsmError as exc:
            raise unavailable(exc, "sign") from None


class RsaSigner(_Delegating, rsa.RSAPrivateKey):
    def decrypt(self, ciphertext: bytes, padding):
        return self._key.decrypt(ciphertext, padding)

    def sign(self, data: bytes, padding, algorithm) -> bytes:
        try:
            return self._key.sign(data, padding, algorithm)
        except hsm.HsmError as exc:
            raise unavailable(exc, "sign") from None
