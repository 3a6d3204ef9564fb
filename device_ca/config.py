"""Settings: ``device-ca.toml`` in the state directory, then environment variables (which win).

Secrets are not settings: the HSM PIN is read by ``hsm.pin_from_env`` from
``DEVICE_CA_HSM_PIN`` or ``DEVICE_CA_HSM_PIN_FILE`` when the token is opened, and the Keycloak
admin password or client secret by ``device_ca.keycloak.credentials_from_env`` from
``DEVICE_CA_KEYCLOAK_PASSWORD[_FILE]`` or ``DEVICE_CA_KEYCLOAK_CLIENT_SECRET[_FILE]``, and the audit
webhook's HMAC key by ``device_ca.siem.webhook.secret_from_env`` from ``DEVICE_CA_AUDIT_WEBHOOK_SECRET``
or ``DEVICE_CA_AUDIT_WEBHOOK_SECRET_FILE``, and nowhere else.
"""
from __future__ import annotations

import os
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from device_ca.errors import DeviceCAError, Kind

_KEYCLOAK_KEYS = {"keycloak_url", "keycloak_admin_realm", "keycloak_client_id", "keycloak_username",
                  "keycloak_ca_file", "keycloak_concurrency", "keycloak_timeout"}
_WEBHOOK_KEYS = {"audit_webhook_url", "audit_webhook_ca_file", "audit_webhook_timeout"}
_FILE_KEYS = {"database_url", "hsm_module", "hsm_token", "public_url", "policy_dir", "lint"} | _KEYCLOAK_KEYS \
    | _WEBHOOK_KEYS
LINT_MODES = ("template", "full")


@dataclass(frozen=True)
class KeycloakSettings:
    """Where the Keycloak Admin API is and whom device-ca logs in as (the secret is read apart)."""

    url: str
    admin_realm: str = "master"
    client_id: str = "admin-cli"
    username: str | None = None
    ca_file: Path | None = None
    concurrency: int = 8
    timeout: float = 10.0


@dataclass(frozen=True)
class WebhookSettings:
    """Where the server delivers audit events (HTTPS only); the HMAC key is read apart."""

    url: str
    ca_file: Path | None = None        # the receiver's CA, if not one the system trusts
    timeout: float = 10.0


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    hsm_module: str
    hsm_token: str
    public_url: str
    policy_dir: Path
    lint: str = "template"
    keycloak: KeycloakSettings | None = None
    audit_webhook: WebhookSettings | None = None

    @classmethod
    def load(cls, environ: Mapping[str, str] = os.environ, file_text: str | None = None) -> "Settings":
        """``file_text``: the content of a ``device-ca.toml`` not yet in place (``restore`` takes it
        from a backup), read instead of the state directory's."""
        home = Path(environ.get("DEVICE_CA_HOME", "var")).absolute()
        if file_text is None:
            file_values = _read_file(home / "device-ca.toml")
        else:
            file_values = _parse_file(file_text, home / "device-ca.toml")

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
            keycloak=_keycloak(pick),
            audit_webhook=_webhook(pick),
        )


def _keycloak(pick) -> KeycloakSettings | None:
    url = pick("keycloak_url", "").rstrip("/")
    if not url:
        return None
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment:
        raise DeviceCAError(Kind.MALFORMED, f"DEVICE_CA_KEYCLOAK_URL {url!r} is not an http(s) base URL")
    try:
        concurrency = int(pick("keycloak_concurrency", "8"))
        timeout = float(pick("keycloak_timeout", "10"))
    except ValueError:
        raise DeviceCAError(Kind.MALFORMED, "keycloak_concurrency and keycloak_timeout must be numbers") from None
    if not 1 <= concurrency <= 64 or not 0 < timeout <= 300:
        raise DeviceCAError(Kind.MALFORMED, "keycloak_concurrency must be 1..64 and keycloak_timeout 0..300 s")
    ca_file = pick("keycloak_ca_file", "")
    return KeycloakSettings(url=url, admin_realm=pick("keycloak_admin_realm", "master"),
                            client_id=pick("keycloak_client_id", "admin-cli"),
                            username=pick("keycloak_username", "") or None,
                            ca_file=Path(ca_file).absolute() if ca_file else None,
                            concurrency=concurrency, timeout=timeout)


def _webhook(pick) -> WebhookSettings | None:
    url = pick("audit_webhook_url", "")
    if not url:
        return None
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "https" or not parsed.hostname or parsed.fragment or any(c.isspace() for c in url):
        raise DeviceCAError(Kind.MALFORMED, "audit_webhook_url must be an https:// URL (events leave the CA over "
                            "verified TLS only)")
    if parsed.username or parsed.password:
        raise DeviceCAError(Kind.MALFORMED, "audit_webhook_url must not carry credentials; the receiver "
                            "authenticates the events by their HMAC (DEVICE_CA_AUDIT_WEBHOOK_SECRET[_FILE])")
    try:
        timeout = float(pick("audit_webhook_timeout", "10"))
    except ValueError:
        raise DeviceCAError(Kind.MALFORMED, "audit_webhook_timeout must be a number of seconds") from None
    if not 0 < timeout <= 15:                # below the deliverer's lease (siem/webhook.py LEASE_TTL)
        raise DeviceCAError(Kind.MALFORMED, "audit_webhook_timeout must be 0..15 s")
    ca_file = pick("audit_webhook_ca_file", "")
    return WebhookSettings(url=url, ca_file=Path(ca_file).absolute() if ca_file else None, timeout=timeout)


def _read_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeviceCAError(Kind.MALFORMED, f"{path}: {exc}") from None
    return _parse_file(text, path)


def _parse_file(text: str, path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DeviceCAError(Kind.MALFORMED, f"{path}: {exc}") from None
    unknown = set(data) - _FILE_KEYS
    if unknown:
        raise DeviceCAError(Kind.MALFORMED, f"{path}: unknown settings {', '.join(sorted(unknown))}")
    return {k: str(v) for k, v in data.items()}
