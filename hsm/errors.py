"""HsmError and the mapping of PKCS#11 return values (CKR_*) onto it.

Return values are those of the PKCS#11 v2.40 Base Specification, section 5.1
("Function return values"). Every failure that leaves this package is an
``HsmError`` with a one-line message that is safe to show: it never contains the
PIN, and it names the failing PKCS#11 return value so an operator can look it up.
"""
from __future__ import annotations

from typing import Final

REASONS: Final = frozenset({"module", "token", "pin", "key", "exists", "device", "fork"})

# The few CKR_* values this package handles itself (PKCS#11 v2.40 Base §5.1, pkcs11t.h).
CKR_OK: Final = 0x000
CKR_GENERAL_ERROR: Final = 0x005
CKR_DEVICE_ERROR: Final = 0x030
CKR_DEVICE_REMOVED: Final = 0x032
CKR_PIN_INCORRECT: Final = 0x0A0
CKR_PIN_INVALID: Final = 0x0A1
CKR_PIN_LEN_RANGE: Final = 0x0A2
CKR_PIN_EXPIRED: Final = 0x0A3
CKR_PIN_LOCKED: Final = 0x0A4
CKR_SESSION_CLOSED: Final = 0x0B0
CKR_SESSION_HANDLE_INVALID: Final = 0x0B3
CKR_TOKEN_NOT_PRESENT: Final = 0x0E0
CKR_USER_ALREADY_LOGGED_IN: Final = 0x100
CKR_USER_NOT_LOGGED_IN: Final = 0x101
CKR_USER_PIN_NOT_INITIALIZED: Final = 0x102
CKR_CRYPTOKI_NOT_INITIALIZED: Final = 0x190
CKR_CRYPTOKI_ALREADY_INITIALIZED: Final = 0x191

_CKR_NAMES: Final = {
    value: name
    for name, value in globals().items()
    if name.startswith("CKR_") and isinstance(value, int)
}

PIN_FAILURES: Final = frozenset(
    {CKR_PIN_INCORRECT, CKR_PIN_INVALID, CKR_PIN_LEN_RANGE, CKR_PIN_EXPIRED, CKR_PIN_LOCKED,
     CKR_USER_PIN_NOT_INITIALIZED}
)

# python-pkcs11 raises one exception class per CKR_* value. These mean that the
# session (or the whole token) is gone: the Token drops its session and reconnects
# on the next call. CKR_OBJECT_HANDLE_INVALID / CKR_KEY_HANDLE_INVALID are in the
# list because cached object handles die with the token (SoftHSM returns them when
# its token directory disappears); after the reconnect the key is looked up again.
SESSION_LOST: Final = frozenset({
    "SessionHandleInvalid", "SessionClosed", "DeviceRemoved", "DeviceError", "DeviceMemory",
    "TokenNotPresent", "TokenNotRecognised", "GeneralError", "FunctionFailed",
    "UserNotLoggedIn", "ObjectHandleInvalid", "KeyHandleInvalid", "OperationActive",
    "OperationNotInitialized", "PKCS11Error",
})


class HsmError(Exception):
    """One-line, safe message. .reason is one of: "module", "token", "pin", "key", "exists", "device", "fork"."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown HsmError reason {reason!r}")
        message = " ".join(str(message).split())  # one line, whatever the cause said
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"HsmError({self.reason!r}, {self.message!r})"

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return HsmError, (self.reason, self.message)  # survives pickling (multiprocessing)


def ckr_name(rv: int) -> str:
    """Name of a CKR_* return value, or its hex value when this package does not know it."""
    return _CKR_NAMES.get(rv, f"CKR 0x{rv:08X}")


def pkcs11_error_name(exc: BaseException) -> str:
    """Short name of a python-pkcs11 exception (its class names the CKR_* value)."""
    name = type(exc).__name__
    if name == "PKCS11Error" and exc.args:
        # Plain PKCS11Error carries a text such as "CKR_CRYPTOKI_NOT_INITIALIZED" or an OS message.
        return str(exc.args[0]).splitlines()[0][:120]
    return name


def loses_session(exc: BaseException) -> bool:
    """True when the error means the session or token is gone (reconnect on next call)."""
    return type(exc).__name__ in SESSION_LOST
