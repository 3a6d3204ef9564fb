"""Settings: ``device-ca.toml`` in the state directory, then environment variables (which win).

Secrets are not settings: the HSM PIN is read by ``hsm.pin_from_env`` from
``DEVICE_CA_HSM_PIN`` or ``DEVICE_CA_HSM_PIN_FILE`` when the token is opened, and nowhere else.
"""
from __future__ import annotations

import os
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from device_ca.errors import DeviceCAError, Kind

_FILE_KEYS = {"database_url", "hsm_module", "hsm_token", "public_url", "policy_dir", "lint"}
LINT_MODES = ("template", "full")


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    hsm_module: str
    hsm_token: str
    public_url: str
    policy_dir: Path
    lint: str = "template"

    @classmethod
    def load(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        home = Path(environ.get("DEVICE_CA_HOME", "var")).absolute()
        file_values = _read_file(home / "device-ca.toml")

        def pick(key: str, default: str) -> str:
            return environ.get(f"DEVICE_CA_{key.upper()}") or file_values.get(key) or default

        public_url = pick("public_url", "http://127.0.0.1:8080").rstrip("/")
        parsed = urllib.parse.urlsplit(public_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment \
                or any(c.isspace() for c in public_url):
            raise DeviceCAError(Kind.MALFORMED, f"DEVICE_CA_PUBLIC_URL {public_url!r} is not an http(s) base URL")
        lint = pick("lint", "template")
        if lint not in LINT_MODES:
            raise DeviceCAError(Kind.MALFORMED, f"DEVICE_CA_LINT must be one of {', '.join(LINT_MODES)}, not {lint!r}")
        return cls(
            home=home, lint=lint,
            database_url=pick("database_url", f"sqlite:///{home / 'device-ca.db'}"),
            hsm_module=pick("hsm_module", "/usr/lib/softhsm/libsofthsm2.so"),
            hsm_token=pick("hsm_token", "device-ca"),
            public_url=public_url,
            policy_dir=Path(pick("policy_dir", "policies")).absolute(),
        )


def _read_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeviceCAError(Kind.MALFORMED, f"{path}: {exc}") from None
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise DeviceCAError(Kind.MALFORMED, f"{path}: unknown settings {', '.join(sorted(unknown))}")
    return {k: str(v) for k, v in data.items()}
