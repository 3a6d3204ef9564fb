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
    ocsp_login: bool = False          # a policy asks for the OCSP-checked X.509 user login


# The OCSP-checked login for devices represented as users (policy `ocsp_checked_user_flow`): a direct
# grant flow whose one step is Keycloak's X.509 authenticator, asking device-ca's OCSP responder
# about every certificate (fail closed), bound to a public client that only does direct grants.
OCSP_FLOW = "device-ca x509 direct grant"
OCSP_CLIENT = "device-ca-x509-login"
OCSP_CONFIG = "device-ca-ocsp"
X509_DIRECT_GRANT = "direct-grant-auth-x509-username"


def ocsp_login_config(ocsp_url: str) -> dict[str, str]:
    return {"x509-cert-auth.mapping-source-selection": "Subject's Common Name",
            "x509-cert-auth.mapper-selection": "Username or Email",
            "x509-cert-auth.ocsp-checking-enabled": "true", "x509-cert-auth.ocsp-fail-open": "false",
            "x509-cert-auth.ocsp-responder-uri": ocsp_url,
            "x509-cert-auth.crl-checking-enabled": "false", "x509-cert-auth.crldp-checking-enabled": "false",
            "x509-cert-auth.timestamp-validation-enabled": "true"}


def realm_settings(retention: dt.timedelta) -> dict:
    seconds = int(retention.total_seconds())
    return {"enabled": True, "bruteForceProtected": True, "eventsEnabled": True, "eventsExpiration": seconds,
            "adminEventsEnabled": True, "adminEventsDetailsEnabled": True,
            "attributes": {"adminEventsExpiration": str(seconds)}}


class RealmSetup:
    def __init__(self, admin: AdminClient, policies: Policies, retention: dt.timedelta = DEFAULT_EVENT_RETENTION,
                 ocsp_url: str | None = None):
        self.admin = admin
        self.policies = policies
        self.retention = retention
        self.ocsp_url = ocsp_url              # device-ca's responder, for the OCSP-checked login

    def wanted(self, only: set[str] | None = None) -> dict[str, _Wanted]:
        """realm -> the client scopes its policies list and the session limits their clients need."""
        realms: dict[str, _Wanted] = {}
        for policy in self.policies:
            mapping = policy.keycloak
            if mapping is None or (only is not None and mapping.realm not in only):
                continue
            wanted = realms.setdefault(mapping.realm, _Wanted(set(), {}))
            wanted.scopes.update(mapping.default_client_scopes)
            wanted.ocsp_login |= mapping.ocsp_checked_user_flow
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
            if wanted.ocsp_login:
                fields += self._ocsp_login_differences(realm)
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
        ocsp = {realm for realm, wanted in self.wanted({c.realm for c in changes}).items() if wanted.ocsp_login}
        for change in changes:
            if change.realm in ocsp:
                self._ensure_ocsp_login(change.realm)
        for change in changes:                     # read back: what was meant is what Keycloak holds
            actual = self.admin.get_realm(change.realm) or {}
            left = _differences(settings, actual) + sorted(_raise(dict(change.raised), actual))
            if change.realm in ocsp:
                left += self._ocsp_login_differences(change.realm)
            missing = set(change.scopes) - set(self.admin.client_scopes(change.realm))
            if left or missing:
                raise KeycloakError(f"realm {change.realm} still differs after {change.action}: "
                                    f"{', '.join(left + sorted(missing))}")


    def _ocsp_login_differences(self, realm: str) -> list[str]:
        if not self.ocsp_url:
            raise KeycloakError(f"realm {realm}: a policy asks for the OCSP-checked login, but no OCSP URL is known "
                                "(public_url)")
        flow = self.admin.flows(realm).get(OCSP_FLOW)
        if flow is None:
            return ["ocsp login flow"]
        step = next((e for e in self.admin.executions(realm, OCSP_FLOW) if e.get("providerId") == X509_DIRECT_GRANT),
                    None)
        fields = []
        if step is None or step.get("requirement") != "REQUIRED":
            fields.append("ocsp login step")
        config = self.admin.authenticator_config(realm, step["authenticationConfig"]) \
            if step and step.get("authenticationConfig") else None
        if config is None or config.get("config") != {**(config or {}).get("config", {}),
                                                        **ocsp_login_config(self.ocsp_url)}:
            fields.append("ocsp login config")
        client = self.admin.find_client(realm, OCSP_CLIENT)
        if client is None or (client.get("authenticationFlowBindingOverrides") or {}).get("direct_grant") != flow["id"] \
                or client.get("directAccessGrantsEnabled") is not True or client.get("enabled") is not True:
            fields.append("ocsp login client")
        return fields

    def _ensure_ocsp_login(self, realm: str) -> None:
        if OCSP_FLOW not in self.admin.flows(realm):
            self.admin.create_flow(realm, OCSP_FLOW, "devices as users: X.509 certificate checked by OCSP (device-ca)")
        steps = [e for e in self.admin.executions(realm, OCSP_FLOW) if e.get("providerId") == X509_DIRECT_GRANT]
        if not steps:
            self.admin.add_execution(realm, OCSP_FLOW, X509_DIRECT_GRANT)
            steps = [e for e in self.admin.executions(realm, OCSP_FLOW) if e.get("providerId") == X509_DIRECT_GRANT]
        step = steps[0]
        if step.get("requirement") != "REQUIRED":
            self.admin.update_execution(realm, OCSP_FLOW, {**step, "requirement": "REQUIRED"})
        wanted = ocsp_login_config(self.ocsp_url)
        if step.get("authenticationConfig"):
            current = self.admin.authenticator_config(realm, step["authenticationConfig"]) or {}
            self.admin.update_authenticator_config(realm, step["authenticationConfig"], current.get("alias", OCSP_CONFIG),
                                                   {**(current.get("config") or {}), **wanted})
        else:
            self.admin.create_authenticator_config(realm, step["id"], OCSP_CONFIG, wanted)
        flow_id = self.admin.flows(realm)[OCSP_FLOW]["id"]
        login = {"clientId": OCSP_CLIENT, "name": OCSP_CLIENT, "enabled": True, "publicClient": True,
                 "directAccessGrantsEnabled": True, "standardFlowEnabled": False, "implicitFlowEnabled": False,
                 "serviceAccountsEnabled": False, "description": "devices as users: X.509 + OCSP login (device-ca)",
                 "authenticationFlowBindingOverrides": {"direct_grant": flow_id}}
        client = self.admin.find_client(realm, OCSP_CLIENT)
        if client is None:
            self.admin.create_client(realm, login)
        else:
            self.admin.update_client(realm, client["id"], {**client, **login})


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
