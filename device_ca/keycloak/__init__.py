"""Keycloak in step with the fleet: one ``client-x509`` client per device, kept by the outbox
drainer after each issuance and revocation and by ``device-ca keycloak sync`` for the whole fleet."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from device_ca.config import KeycloakSettings
from device_ca.errors import DeviceCAError, Kind
from device_ca.keycloak.admin import AdminClient, Credentials, KeycloakError


def _secret(environ: Mapping[str, str], name: str) -> str | None:
    if environ.get(name):
        return environ[name]
    path = environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DeviceCAError(Kind.MALFORMED, f"{name}_FILE {path}: {exc.strerror}") from None


def credentials_from_env(settings: KeycloakSettings, environ: Mapping[str, str] = os.environ) -> Credentials:
    """The admin credentials: a user with ``DEVICE_CA_KEYCLOAK_PASSWORD[_FILE]`` when ``keycloak_username``
    is set, otherwise the service-account client with ``DEVICE_CA_KEYCLOAK_CLIENT_SECRET[_FILE]``."""
    password = _secret(environ, "DEVICE_CA_KEYCLOAK_PASSWORD")
    client_secret = _secret(environ, "DEVICE_CA_KEYCLOAK_CLIENT_SECRET")
    if settings.username and not password:
        raise DeviceCAError(Kind.MALFORMED, "keycloak_username is set: give the password in "
                            "DEVICE_CA_KEYCLOAK_PASSWORD or DEVICE_CA_KEYCLOAK_PASSWORD_FILE")
    if not settings.username and not client_secret:
        raise DeviceCAError(Kind.MALFORMED, "Keycloak credentials missing: set keycloak_username with "
                            "DEVICE_CA_KEYCLOAK_PASSWORD[_FILE], or keycloak_client_id with "
                            "DEVICE_CA_KEYCLOAK_CLIENT_SECRET[_FILE]")
    return Credentials(realm=settings.admin_realm, client_id=settings.client_id, username=settings.username,
                       password=password, client_secret=client_secret)


def admin_client(settings: KeycloakSettings, environ: Mapping[str, str] = os.environ) -> AdminClient:
    return AdminClient(settings.url, credentials_from_env(settings, environ), timeout=settings.timeout,
                       ca_file=str(settings.ca_file) if settings.ca_file else None)


__all__ = ["AdminClient", "Credentials", "KeycloakError", "admin_client", "credentials_from_env"]
