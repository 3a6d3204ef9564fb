"""The realms the policies name, set up as a device fleet needs them (``device-ca keycloak init-realm``).

For every realm a policy's ``[keycloak]`` table names: the realm exists and is enabled,
brute-force detection is on, login (user) events and admin events are recorded and kept for the
retention given, the client scopes the policies list exist, and the realm's SSO session limits
are at least the client session settings the policies ask for (Keycloak refuses a client whose
session settings exceed its realm's; the limits are only ever raised). The claims and audiences of
device tokens are the device clients' own mappers (representation.py), set by the sync. Creating
and updating are idempotent: a realm already as wanted is left alone, and only the settings named
here are touched (a PUT of the realm with only these fields leaves every other setting as it is).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from device_ca.keycloak.admin import AdminClient, KeycloakError
from device_ca.policy import Policies

DEFAULT_EVENT_RETENTION = dt.timedelta(days=30)


@dataclass(frozen=True)
class RealmChange:
    realm: str
    action: str                       # create, update, unchanged
    fields: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()      # client scopes to create
    raised: tuple[tuple[str, int], ...] = ()   # realm session limits raised to what the clients ask for

    def describe(self) -> str:
        what = {"create": "create realm", "update": "update realm: " + ", ".join(self.fields),
                "unchanged": "realm unchanged"}[self.action]
        if self.scopes:
            what += "; create client scopes " + ", ".join(self.scopes)
        return f"{self.realm}: {what}"


# Client scopes every new realm has (Keycloak 26): not "created" by init-realm.
BUILT_IN_SCOPES = frozenset({"acr", "address", "basic", "email", "microprofile-jwt", "offline_access", "organization",
                             "phone", "profile", "role_list", "roles", "saml_organization", "service_account",
                             "web-origins"})

# A client's session settings may not exceed the realm's SSO session settings (Keycloak refuses the
# client otherwise); these are Keycloak's defaults for a new realm.
SSO_LIMITS = {"client_session_idle": ("ssoSessionIdleTimeout", 1800),
              "client_session_max": ("ssoSessionMaxLifespan", 36000)}


@dataclass
class _Wanted:
    scopes: set[str]
    sessions: dict[str, int]          # realm field -> the least value the policies' clients need


def realm_settings(retention: dt.timedelta) -> dict:
    seconds = int(retention.total_seconds())
    return {"enabled": True, "bruteForceProtected": True, "eventsEnabled": True, "eventsExpiration": seconds,
            "adminEventsEnabled": True, "adminEventsDetailsEnabled": True,
            "attributes": {"adminEventsExpiration": str(seconds)}}


class RealmSetup:
    def __init__(self, admin: AdminClient, policies: Policies, retention: dt.timedelta = DEFAULT_EVENT_RETENTION):
        self.admin = admin
        self.policies = policies
        self.retention = retention

    def wanted(self, only: set[str] | None = None) -> dict[str, _Wanted]:
        """realm -> the client scopes its policies list and the session limits their clients need."""
        realms: dict[str, _Wanted] = {}
        for policy in self.policies:
            mapping = policy.keycloak
            if mapping is None or (only is not None and mapping.realm not in only):
                continue
            wanted = realms.setdefault(mapping.realm, _Wanted(set(), {}))
            wanted.scopes.update(mapping.default_client_scopes)
            for attribute, (field, _) in SSO_LIMITS.items():
                value = getattr(mapping, attribute)
                if value is not None:
                    wanted.sessions[field] = max(wanted.sessions.get(field, 0), int(value.total_seconds()))
        return realms

    def plan(self, only: set[str] | None = None) -> list[RealmChange]:
        settings = realm_settings(self.retention)
        changes = []
        for realm, wanted in sorted(self.wanted(only).items()):
            actual = self.admin.get_realm(realm)
            if actual is None:
                changes.append(RealmChange(realm, "create", (), tuple(sorted(wanted.scopes - BUILT_IN_SCOPES)),
                                           tuple(sorted(_raise(wanted.sessions, {}).items()))))
                continue
            raised = _raise(wanted.sessions, actual)
            fields = _differences(settings, actual) + sorted(raised)
            missing = tuple(sorted(wanted.scopes - set(self.admin.client_scopes(realm))))
            changes.append(RealmChange(realm, "update" if fields else "unchanged", tuple(fields), missing,
                                       tuple(sorted(raised.items()))))
        return changes

    def apply(self, changes: list[RealmChange]) -> None:
        settings = realm_settings(self.retention)
        for change in changes:
            if change.action == "create":
                self.admin.create_realm(change.realm, **{k: v for k, v in settings.items() if k != "enabled"},
                                        **dict(change.raised))
            elif change.action == "update":
                current = (self.admin.get_realm(change.realm) or {}).get("attributes") or {}
                self.admin.update_realm(change.realm, {**settings, **dict(change.raised),      # other attributes kept
                                                       "attributes": {**current, **settings["attributes"]}})
            for scope in change.scopes:
                self.admin.create_client_scope(change.realm, scope)
        for change in changes:                     # read back: what was meant is what Keycloak holds
            actual = self.admin.get_realm(change.realm) or {}
            left = _differences(settings, actual) + sorted(_raise(dict(change.raised), actual))
            missing = set(change.scopes) - set(self.admin.client_scopes(change.realm))
            if left or missing:
                raise KeycloakError(f"realm {change.realm} still differs after {change.action}: "
                                    f"{', '.join(left + sorted(missing))}")


def _differences(settings: dict, actual: dict) -> list[str]:
    fields = [key for key, value in settings.items() if key != "attributes" and actual.get(key) != value]
    have = actual.get("attributes") or {}
    fields += [f"attributes.{key}" for key, value in settings["attributes"].items() if have.get(key) != value]
    return fields


def _raise(needed: dict[str, int], actual: dict) -> dict[str, int]:
    """The realm session limits below what the clients need (never lowered)."""
    defaults = {field: default for field, default in SSO_LIMITS.values()}
    return {field: value for field, value in needed.items()
            if int(actual.get(field) or defaults[field]) < value}
