"""The Keycloak client that a device certificate calls for, and how a client in Keycloak differs from it.

A device client authenticates with ``client-x509`` (RFC 8705 §2.1, PKI mutual-TLS method): Keycloak
accepts a TLS client certificate whose subject DN, as ``X500Principal.getName(RFC2253)``, equals
``x509.subjectdn`` exactly (with ``x509.allow.regex.pattern.comparison`` "false"; absent means regex)
and whose chain ends at a trust anchor named by ``x509.casubjectdn``. Or, with ``client-jwt``
(RFC 7523 private_key_jwt), with a JWT signed by the device's own key: the client's credential is
the device certificate (``jwt.credential.certificate``), replaced on renewal and rekey.

Each client carries its own protocol mappers, named ``device-ca ...``: the claims ``device_id``,
``device_class`` (the policy) and ``cert_serial`` (the certificate the client was last set up
for; per device, so they cannot live in a shared client scope) and one audience per resource
server of the policy, so that those servers can introspect the device's tokens.
"""
from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from device_ca.policy.model import KeycloakMapping

# RFC 2253 §2.3 keywords; any other attribute type is written as its dotted OID with the
# BER value in hex (#...), which is also how Java's RFC2253 form writes unknown types.
_KEYWORDS = {
    NameOID.COMMON_NAME: "CN", NameOID.LOCALITY_NAME: "L", NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COUNTRY_NAME: "C",
    NameOID.STREET_ADDRESS: "STREET", NameOID.DOMAIN_COMPONENT: "DC", NameOID.USER_ID: "UID",
}
SERVICE_ACCOUNT_SCOPE = "service_account"      # Keycloak adds it to every service-account client

MAPPER_PREFIX = "device-ca "

FIXED = {
    "protocol": "openid-connect",
    "publicClient": False,
    "bearerOnly": False,
    "serviceAccountsEnabled": True,
    "standardFlowEnabled": False,
    "implicitFlowEnabled": False,
    "directAccessGrantsEnabled": False,
}


def rfc2253(name: x509.Name) -> str:
    """The RFC 2253 string of a DN from its encoded RDNs: most specific RDN first, values escaped
    (§2.4), attribute types without a keyword as ``OID=#hex``."""
    rdns = []
    for rdn in reversed(list(name.rdns)):
        avas = []
        for attribute in rdn:
            keyword = _KEYWORDS.get(attribute.oid)
            if keyword is not None and isinstance(attribute.value, str):
                avas.append(f"{keyword}={_escape(attribute.value)}")
            else:
                avas.append(f"{attribute.oid.dotted_string}=#{_der_value(attribute).hex()}")
        rdns.append("+".join(avas))
    return ",".join(rdns)


def _escape(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;' or (i == 0 and ch in "# ") or (i == len(value) - 1 and ch == " "):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append("".join(f"\\{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def _mapper(name: str, kind: str, config: dict[str, str]) -> dict:
    return {"name": MAPPER_PREFIX + name, "protocol": "openid-connect", "protocolMapper": kind,
            "config": {**config, "access.token.claim": "true", "introspection.token.claim": "true",
                       "id.token.claim": "false", "userinfo.token.claim": "false"}}


def _der_value(attribute: x509.NameAttribute) -> bytes:
    """The DER of one attribute value, cut out of the encoded name."""
    from asn1crypto import x509 as asn1_x509

    encoded = x509.Name([x509.RelativeDistinguishedName([attribute])]).public_bytes()
    parsed = asn1_x509.Name.load(encoded)
    return parsed.chosen[0][0]["value"].dump()


@dataclass(frozen=True)
class DesiredClient:
    """What Keycloak should hold for one device in one realm."""

    realm: str
    client_id: str
    enabled: bool
    subject_dn: str | None = None           # None when disabled: the attributes are then left as they are
    ca_subject_dn: str | None = None
    access_token_lifespan: dt.timedelta | None = None
    certificate_bound_tokens: bool = True
    default_client_scopes: tuple[str, ...] = ()
    serial: str | None = None
    device_class: str | None = None         # the policy
    audience: tuple[str, ...] = ()
    authenticator: str = "client-x509"
    certificate_b64: str | None = None      # the device certificate, base64 DER (client-jwt's credential)
    device_authorization_grant: bool = False
    client_session_idle: dt.timedelta | None = None
    client_session_max: dt.timedelta | None = None
    not_before: int | None = None           # disabling: tokens issued before this (epoch seconds) are void

    @classmethod
    def for_certificate(cls, mapping: KeycloakMapping, client_id: str, certificate: x509.Certificate,
                        trust_anchor: x509.Certificate, serial: str | None = None,
                        policy: str | None = None) -> "DesiredClient":
        from cryptography.hazmat.primitives.serialization import Encoding

        return cls(realm=mapping.realm, client_id=client_id, enabled=True,
                   subject_dn=rfc2253(certificate.subject), ca_subject_dn=rfc2253(trust_anchor.subject),
                   access_token_lifespan=mapping.access_token_lifespan,
                   certificate_bound_tokens=mapping.certificate_bound_tokens,
                   default_client_scopes=tuple(mapping.default_client_scopes), serial=serial,
                   device_class=policy, audience=tuple(mapping.audience),
                   authenticator=mapping.client_authenticator,
                   certificate_b64=base64.b64encode(certificate.public_bytes(Encoding.DER)).decode()
                   if mapping.client_authenticator == "client-jwt" else None,
                   device_authorization_grant=mapping.device_authorization_grant,
                   client_session_idle=mapping.client_session_idle, client_session_max=mapping.client_session_max)

    @classmethod
    def disabled(cls, realm: str, client_id: str, not_before: int | None = None) -> "DesiredClient":
        return cls(realm=realm, client_id=client_id, enabled=False, not_before=not_before)

    def attributes(self) -> dict[str, str]:
        if not self.enabled:
            return {}
        attributes = {
            "access.token.lifespan": str(int(self.access_token_lifespan.total_seconds())),
            "tls.client.certificate.bound.access.tokens": "true" if self.certificate_bound_tokens else "false",
            "oauth2.device.authorization.grant.enabled": "true" if self.device_authorization_grant else "false",
        }
        if self.authenticator == "client-jwt":
            attributes.update({"jwt.credential.certificate": self.certificate_b64, "use.jwks.url": "false"})
        else:
            attributes.update({"x509.subjectdn": self.subject_dn, "x509.allow.regex.pattern.comparison": "false",
                               "x509.casubjectdn": self.ca_subject_dn})
        if self.client_session_idle is not None:
            attributes["client.session.idle.timeout"] = str(int(self.client_session_idle.total_seconds()))
        if self.client_session_max is not None:
            attributes["client.session.max.lifespan"] = str(int(self.client_session_max.total_seconds()))
        return attributes

    def fixed(self) -> dict:
        return {**FIXED, "clientAuthenticatorType": self.authenticator}

    def protocol_mappers(self) -> list[dict]:
        """The client's own mappers (claims and audiences), by name."""
        if not self.enabled:
            return []
        mappers = []
        for claim, value in (("device_id", self.client_id), ("device_class", self.device_class),
                             ("cert_serial", self.serial)):
            if value:
                mappers.append(_mapper(claim, "oidc-hardcoded-claim-mapper",
                                       {"claim.name": claim, "claim.value": value, "jsonType.label": "String"}))
        for audience in self.audience:
            mappers.append(_mapper(f"audience {audience}", "oidc-audience-mapper",
                                   {"included.custom.audience": audience}))
        return mappers

    def representation(self) -> dict:
        """The body that creates the client (the default client scopes replace the realm's defaults)."""
        return {"clientId": self.client_id, "name": self.client_id, "enabled": self.enabled,
                "description": "device client managed by device-ca", **self.fixed(),
                "attributes": self.attributes(), "defaultClientScopes": list(self.default_client_scopes),
                "optionalClientScopes": [], "protocolMappers": self.protocol_mappers()}

    def differences(self, actual: dict) -> list[str]:
        """Field names where ``actual`` (a client representation from Keycloak) departs from this;
        the default client scopes and the protocol mappers are compared apart (``scope_changes``,
        ``mapper_changes``)."""
        if not self.enabled:
            return ["enabled"] if actual.get("enabled", True) else []
        fields = [key for key, value in self.fixed().items() if actual.get(key) != value]
        if actual.get("enabled") is not True:
            fields.append("enabled")
        have = actual.get("attributes") or {}
        fields += [f"attributes.{key}" for key, value in self.attributes().items() if have.get(key) != value]
        return fields

    def patched(self, actual: dict) -> dict:
        """``actual`` with the managed fields set (a PUT replaces the whole representation)."""
        updated = dict(actual)
        updated["enabled"] = self.enabled
        if not self.enabled and self.not_before is not None:     # introspection: earlier tokens inactive
            updated["notBefore"] = max(int(actual.get("notBefore") or 0), self.not_before)
        if self.enabled:
            updated.update(self.fixed())
            updated["attributes"] = {**(actual.get("attributes") or {}), **self.attributes()}
        updated.pop("defaultClientScopes", None)
        updated.pop("optionalClientScopes", None)
        updated.pop("protocolMappers", None)
        return updated

    def mapper_changes(self, actual: dict | None) -> tuple[list[dict], list[dict], list[dict]]:
        """(mappers to add, mappers to update (with their id), ids of device-ca's mappers to remove)."""
        if not self.enabled:
            return [], [], []
        have = {m.get("name"): m for m in (actual or {}).get("protocolMappers") or ()
                if str(m.get("name", "")).startswith(MAPPER_PREFIX)}
        add, update = [], []
        for mapper in self.protocol_mappers():
            current = have.pop(mapper["name"], None)
            if current is None:
                add.append(mapper)
            elif current.get("protocolMapper") != mapper["protocolMapper"] or \
                    any((current.get("config") or {}).get(k) != v for k, v in mapper["config"].items()):
                update.append({**mapper, "id": current.get("id")})
        return add, update, [m for m in have.values()]

    def scope_changes(self, current: set[str]) -> tuple[set[str], set[str]]:
        """(scopes to add, scopes to remove) to make the client's default scopes the policy's."""
        if not self.enabled:
            return set(), set()
        wanted = set(self.default_client_scopes)
        return wanted - current, current - wanted - {SERVICE_ACCOUNT_SCOPE}
