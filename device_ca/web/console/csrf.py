"""CSRF protection for the console's forms (OWASP's HMAC-based token pattern, bound to the caller).

The console has no cookie session: who is calling is the TLS client certificate. A form carries a
token ``ISSUED.MAC`` where MAC = HMAC-SHA256(secret, label, certificate fingerprint, ISSUED); a POST
is accepted only with a token made for the same certificate within ``max_age``, compared in
constant time. A token taken from one operator's page is worthless with another certificate; a
cross-site form cannot read a token at all (same-origin policy, ``frame-ancestors 'none'``).

The secret is 32 random bytes in the state directory (``console-csrf.key``, mode 0600), made once by
whichever process gets there first (written aside, then linked into place: no process reads half a
file) and shared by every worker of the node; nodes behind one balancer share the state directory
or the file. A key file that others may read is refused.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from device_ca.errors import DeviceCAError, Kind

SECRET_FILE = "console-csrf.key"
SECRET_BYTES = 32
MAX_AGE = dt.timedelta(hours=12)
_LABEL = b"device-ca console csrf v1"


def load_secret(state_dir: Path) -> bytes:
    """The node's CSRF secret, made on first use."""
    path = state_dir / SECRET_FILE
    if not path.exists():
        aside = state_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(aside, path)                 # fails if another process linked its own first: use that
        except FileExistsError:
            pass
        finally:
            aside.unlink()
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise DeviceCAError(Kind.INTERNAL, f"{path} is readable by others (mode {mode:o}); it must be 0600")
    secret = path.read_bytes()
    if len(secret) != SECRET_BYTES:
        raise DeviceCAError(Kind.INTERNAL, f"{path} holds {len(secret)} bytes, not {SECRET_BYTES}")
    return secret


class Csrf:
    def __init__(self, secret: bytes, clock, max_age: dt.timedelta = MAX_AGE):
        if len(secret) < 16:
            raise ValueError("a CSRF secret of at least 16 bytes is required")
        self._secret = secret
        self.clock = clock
        self.max_age = max_age

    def token(self, fingerprint: str) -> str:
        """A token for the forms of a page shown to the holder of the certificate ``fingerprint``."""
        issued = str(int(self.clock.now().timestamp()))
        return f"{issued}.{self._mac(fingerprint, issued)}"

    def check(self, fingerprint: str, token: str | None) -> None:
        """FORBIDDEN unless ``token`` was made for ``fingerprint`` and is at most ``max_age`` old."""
        issued, _, mac = (token or "").partition(".")
        if not issued.isdigit() or len(issued) > 12 or not hmac.compare_digest(
                mac.encode(), self._mac(fingerprint, issued).encode()):
            raise DeviceCAError(Kind.FORBIDDEN, "the form's CSRF token is missing or not valid; reload the page")
        age = self.clock.now().timestamp() - int(issued)
        if not -60 <= age <= self.max_age.total_seconds():
            raise DeviceCAError(Kind.FORBIDDEN, "the form has expired; reload the page")

    def _mac(self, fingerprint: str, issued: str) -> str:
        message = b"\0".join((_LABEL, fingerprint.lower().encode(), issued.encode()))
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
