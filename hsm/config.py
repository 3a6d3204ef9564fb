"""Where the CA's token is (TokenConfig) and where its user PIN comes from (pin_from_env).

The PIN is the CKU_USER PIN given to C_Login (PKCS#11 v2.40 Base §5.6, session
management). It comes from the environment or a file, never from the command line
or the database, and it is kept out of every repr, log line and exception message.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hsm.errors import HsmError

PIN_ENV = "DEVICE_CA_HSM_PIN"
PIN_FILE_ENV = "DEVICE_CA_HSM_PIN_FILE"


@dataclass(frozen=True)
class TokenConfig:
    """PKCS#11 module path, token label (CK_TOKEN_INFO.label) and user PIN (never printed)."""

    module: str
    token_label: str
    pin: str = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.module, str) or not self.module:
            raise HsmError("module", "no PKCS#11 module path configured")
        if not isinstance(self.token_label, str) or not self.token_label:
            raise HsmError("token", "no token label configured")
        if not isinstance(self.pin, str) or not self.pin:
            raise HsmError("pin", "empty HSM PIN")


def random_pin(path: str | os.PathLike, length: int) -> str:
    """The PIN in the file ``path``, made first (``length`` random hex characters, mode 0600, created
    exclusively) when the file does not exist."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(length)[:length].encode() + b"\n")
        finally:
            os.close(fd)
    return path.read_text().strip()


def pin_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """DEVICE_CA_HSM_PIN, else the contents of the file named by DEVICE_CA_HSM_PIN_FILE.

    An empty DEVICE_CA_HSM_PIN counts as unset. A trailing newline in the file is removed. Raises HsmError("pin", ...) when neither
    is set, or the file cannot be read or is empty. The message names the file, never the PIN.
    """
    pin = environ.get(PIN_ENV)
    if pin:
        return pin
    path = environ.get(PIN_FILE_ENV)
    if not path:
        raise HsmError("pin", f"no HSM PIN: set {PIN_ENV} or {PIN_FILE_ENV}")
    try:
        with open(path, encoding="utf-8") as handle:
            pin = handle.read()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise HsmError("pin", f"cannot read HSM PIN file {path}: {reason}") from None
    except UnicodeDecodeError:
        raise HsmError("pin", f"HSM PIN file {path} is not UTF-8 text") from None
    pin = pin.removesuffix("\n").removesuffix("\r")
    if not pin:
        raise HsmError("pin", f"HSM PIN file {path} is empty")
    return pin
