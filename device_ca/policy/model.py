"""Device-class policies: one TOML file per class (DESIGN.md "Device-class policies").

The file name is the class and the EST label. A policy can only tighten the ceilings fixed
here in code; an unknown key, a value beyond a ceiling or a missing file is an error at load.
"""
from __future__ import annotations

import datetime as dt
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from device_ca.ca.csr import ALLOWED_KEY_TYPES
from device_ca.errors import DeviceCAError, Kind

MAX_VALIDITY = dt.timedelta(days=1826)          # five years
MAX_ROTATION_GRACE = dt.timedelta(days=30)
MAX_ACCESS_TOKEN_LIFESPAN = dt.timedelta(hours=1)
ALLOWED_EKUS = frozenset({"clientAuth", "serverAuth"})
ENROLLMENT_METHODS = frozenset({"bootstrap-token", "idevid", "admin", "bulk"})
# What a certificate of a policy may authorise its holder to do on device-ca itself.
AUTHORIZATIONS = frozenset({"batch-api", "batch-replace", "proxy", "admin-api"})
SAN_KINDS = frozenset({"dns", "uri"})
DEFAULT_DEVICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
LABEL = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> dt.timedelta:
    """``300s``, ``5m``, ``24h``, ``365d``, ``2w``."""
    match = _DURATION.fullmatch(str(text).strip())
    if not match or int(match[1]) == 0:
        raise ValueError(f"not a duration: {text!r} (examples: 5m, 24h, 365d)")
    try:
        return dt.timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    except OverflowError:                         # more days than a timedelta holds (found by fuzzing)
        raise ValueError(f"duration {text!r} is too long") from None


CLIENT_AUTHENTICATORS = ("client-x509", "client-jwt")
MAX_CLIENT_SESSION = dt.timedelta(days=30)


@dataclass(frozen=True)
class KeycloakMapping:
    realm: str
    default_client_scopes: tuple[str, ...] = ()
    access_token_lifespan: dt.timedelta = dt.timedelta(minutes=5)
    certificate_bound_tokens: bool = True
    audience: tuple[str, ...] = ()                  # resource servers that may introspect the device's tokens
    client_authenticator: str = "client-x509"       # or "client-jwt" (RFC 7523 private_key_jwt, the device's key)
    device_authorization_grant: bool = False        # RFC 8628, for devices that act for a person
    client_session_idle: dt.timedelta | None = None
    client_session_max: dt.timedelta | None = None
    ocsp_checked_user_flow: bool = False            # init-realm: an X.509 user login that asks device-ca's OCSP


@dataclass(frozen=True)
class Policy:
    name: str
    subject: str
    key_types: tuple[str, ...] = ("ec:P-256",)
    description: str = ""
    device_id_pattern: str = DEFAULT_DEVICE_ID_PATTERN
    san: tuple[str, ...] = ()
    eku: tuple[str, ...] = ("clientAuth",)
    key_agreement: bool = False
    validity: dt.timedelta = dt.timedelta(days=365)
    renewal_window: dt.timedelta = dt.timedelta(days=30)
    rotation_grace: dt.timedelta = dt.timedelta(days=1)
    enrollment: tuple[str, ...] = ("bootstrap-token", "admin")
    require_approval: bool = False
    manufacturer_cas: tuple[Path, ...] = field(default=())
    keycloak: KeycloakMapping | None = None
    authorizes: tuple[str, ...] = ()          # e.g. ("batch-api",): its holders are callers, not devices
    idevid_reenroll: str = "refuse"           # or "replace": an IDevID enrollment supersedes the current one


_TOP_KEYS = {"description", "key_types", "device_id_pattern", "subject", "san", "eku", "key_agreement",
             "validity", "renewal_window", "rotation_grace", "enrollment", "require_approval",
             "manufacturer_cas", "keycloak", "authorizes", "idevid_reenroll"}
_KEYCLOAK_KEYS = {"realm", "default_client_scopes", "access_token_lifespan", "certificate_bound_tokens", "audience",
                  "client_authenticator", "device_authorization_grant", "client_session_idle", "client_session_max",
                  "ocsp_checked_user_flow"}


class PolicyError(DeviceCAError):
    def __init__(self, source: str, detail: str):
        super().__init__(Kind.MALFORMED, f"policy {source}: {detail}")


def load_policy(path: Path) -> Policy:
    path = Path(path)
    name = path.stem
    if not LABEL.fullmatch(name):
        raise PolicyError(path.name, "file name must be a lower-case label (a-z, 0-9, -)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(path.name, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PolicyError(path.name, f"not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(path.name, f"not valid TOML: {exc}") from None
    try:
        return _from_dict(name, data, path.parent)
    except (ValueError, TypeError) as exc:
        raise PolicyError(path.name, str(exc)) from None


def _from_dict(name: str, data: dict, base: Path) -> Policy:
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
    if "subject" not in data:
        raise ValueError("'subject' is required")
    kw: dict = {"name": name, "subject": _str(data, "subject")}
    if "{device_id}" not in kw["subject"]:
        raise ValueError("'subject' must contain {device_id}")
    if "description" in data:
        kw["description"] = _str(data, "description")
    if "key_types" in data:
        kw["key_types"] = _subset(data, "key_types", ALLOWED_KEY_TYPES)
    if "device_id_pattern" in data:
        pattern = _str(data, "device_id_pattern")
        try:
            re.compile(pattern)
        except (re.error, OverflowError, RecursionError) as exc:     # not ValueErrors (found by fuzzing)
            raise ValueError(f"device_id_pattern is not a regular expression: {exc}") from None
        kw["device_id_pattern"] = pattern
    if "san" in data:
        sans = _strings(data, "san")
        for template in sans:
            kind, sep, value = template.partition(":")
            if not sep or kind not in SAN_KINDS or not value:
                raise ValueError(f"san {template!r} must be 'dns:...' or 'uri:...'")
        kw["san"] = sans
    if "eku" in data:
        kw["eku"] = _subset(data, "eku", ALLOWED_EKUS)
    for key in ("key_agreement", "require_approval"):
        if key in data:
            kw[key] = _bool(data, key)
    for key, ceiling in (("validity", MAX_VALIDITY), ("rotation_grace", MAX_ROTATION_GRACE),
                         ("renewal_window", MAX_VALIDITY)):
        if key in data:
            kw[key] = _duration(data, key, ceiling)
    if kw.get("renewal_window", Policy.renewal_window) >= kw.get("validity", Policy.validity):
        raise ValueError("'renewal_window' must be shorter than 'validity'")
    if "enrollment" in data:
        kw["enrollment"] = _subset(data, "enrollment", ENROLLMENT_METHODS)
    if "manufacturer_cas" in data:
        files = tuple((base / f).resolve() for f in _strings(data, "manufacturer_cas"))
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"manufacturer CA file not found: {', '.join(missing)}")
        kw["manufacturer_cas"] = files
    if "keycloak" in data:
        kw["keycloak"] = _keycloak(data["keycloak"])
    if "idevid_reenroll" in data:
        kw["idevid_reenroll"] = _str(data, "idevid_reenroll")
        if kw["idevid_reenroll"] not in ("refuse", "replace"):
            raise ValueError("'idevid_reenroll' must be \"refuse\" or \"replace\"")
    if "authorizes" in data:
        kw["authorizes"] = _subset(data, "authorizes", AUTHORIZATIONS)
        if kw.get("enrollment", Policy.enrollment) != ("admin",):
            raise ValueError("a policy whose certificates authorise callers ('authorizes') is issued by an operator "
                             "only: 'enrollment' must be [\"admin\"]")
    return Policy(**kw)


def _keycloak(data) -> KeycloakMapping:
    if not isinstance(data, dict):
        raise ValueError("'keycloak' must be a table")
    unknown = set(data) - _KEYCLOAK_KEYS
    if unknown:
        raise ValueError(f"unknown keys in [keycloak]: {', '.join(sorted(unknown))}")
    if "realm" not in data:
        raise ValueError("[keycloak] needs 'realm'")
    kw: dict = {"realm": _str(data, "realm")}
    if "default_client_scopes" in data:
        kw["default_client_scopes"] = _strings(data, "default_client_scopes")
    if "access_token_lifespan" in data:
        kw["access_token_lifespan"] = _duration(data, "access_token_lifespan", MAX_ACCESS_TOKEN_LIFESPAN)
    if "certificate_bound_tokens" in data:
        kw["certificate_bound_tokens"] = _bool(data, "certificate_bound_tokens")
    if "audience" in data:
        kw["audience"] = _strings(data, "audience")
    if "client_authenticator" in data:
        kw["client_authenticator"] = _str(data, "client_authenticator")
        if kw["client_authenticator"] not in CLIENT_AUTHENTICATORS:
            raise ValueError(f"[keycloak] client_authenticator must be one of {', '.join(CLIENT_AUTHENTICATORS)}")
        if kw["client_authenticator"] == "client-jwt" and "certificate_bound_tokens" not in data:
            kw["certificate_bound_tokens"] = False        # a signed JWT needs no TLS client certificate
    if "device_authorization_grant" in data:
        kw["device_authorization_grant"] = _bool(data, "device_authorization_grant")
    if "ocsp_checked_user_flow" in data:
        kw["ocsp_checked_user_flow"] = _bool(data, "ocsp_checked_user_flow")
    for key in ("client_session_idle", "client_session_max"):
        if key in data:
            kw[key] = _duration(data, key, MAX_CLIENT_SESSION)
    return KeycloakMapping(**kw)


def _str(data: dict, key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' must be a non-empty string")
    return value


def _bool(data: dict, key: str) -> bool:
    if not isinstance(data[key], bool):
        raise ValueError(f"'{key}' must be true or false")
    return data[key]


def _strings(data: dict, key: str) -> tuple[str, ...]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"'{key}' must be a list of strings")
    return tuple(value)


def _subset(data: dict, key: str, allowed: frozenset[str]) -> tuple[str, ...]:
    values = _strings(data, key)
    if not values:
        raise ValueError(f"'{key}' must not be empty")
    beyond = [v for v in values if v not in allowed]
    if beyond:
        raise ValueError(f"'{key}' allows {', '.join(beyond)}, beyond what device-ca permits "
                         f"({', '.join(sorted(allowed))})")
    return values


def _duration(data: dict, key: str, ceiling: dt.timedelta) -> dt.timedelta:
    value = parse_duration(data[key])
    if value > ceiling:
        raise ValueError(f"'{key}' of {data[key]} exceeds the ceiling of {ceiling.days} days"
                         if ceiling.days else f"'{key}' of {data[key]} exceeds the ceiling of {ceiling}")
    return value
