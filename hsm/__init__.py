"""PKCS#11 access for the CA: token-resident keys usable by ``cryptography``'s builders.

Built on python-pkcs11 and the PKCS#11 v2.40 Base Specification (§5.4-§5.14) and
Current Mechanisms Specification (§2.1 RSA, §2.3 elliptic curve). One Token per
process: one logged-in session, every call under one lock; open it after forking.
"""
from __future__ import annotations

from hsm.config import TokenConfig, pin_from_env
from hsm.errors import HsmError
from hsm.keys import KEY_SPECS, Pkcs11EcPrivateKey, Pkcs11PrivateKey, Pkcs11RsaPrivateKey
from hsm.token import Token, open_token

__all__ = [
    "HsmError",
    "KEY_SPECS",
    "Pkcs11EcPrivateKey",
    "Pkcs11PrivateKey",
    "Pkcs11RsaPrivateKey",
    "Token",
    "TokenConfig",
    "open_token",
    "pin_from_env",
]
