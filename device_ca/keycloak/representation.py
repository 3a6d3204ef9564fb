"""The Keycloak client that a device certificate calls for, and how a client in Keycloak differs from it.

A device client authenticates with ``client-x509`` (RFC 8705 §2.1, PKI mutual-TLS method): Keycloak
accepts a TLS client certificate whose subject DN, as ``X500Principal.getName(RFC2253)``, equals
``x509.subjectdn`` exactly (with ``x509.allow.regex.pattern.comparison`` "false"; absent means regex)
and whose chain ends at a trust anchor named by ``x509.casubjectdn``.
"""
from __future__ import annotations

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

FIXED = {
    "protocol": "openid-connect",
    "publicClient": False,
    "bearerOnly": False,
    "clientAuthenticatorType": "client-x509",
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

    @classmethod
    def for_certificate(cls, mapping: KeycloakMapping, client_id: str, certificate: x509.Certificate,
                        trust_anchor: x509.Certificate, serial: str | None = None) -> "DesiredClient":
        return cls(realm=mapping.realm, client_id=client_id, enabled=True,
                   subject_dn=rfc2253(certificate.subject), ca_subject_dn=rfc2253(trust_anchor.subject),
                   access_token_lifespan=mapping.access_token_lifespan,
                   certificate_bound_tokens=mapping.certificate_bound_tokens,
                   default_client_scopes=tuple(mapping.default_client_scopes), serial=serial)

    @classmethod
    def disabled(cls, realm: str, client_id: str) -> "DesiredClient":
        return cls(realm=realm, client_id=client_id, enabled=False)

    def attributes(self) -> dict[str, str]:
        if not self.enabled:
            return {}
        return {
            "x509.subjectdn": self.subject_dn,
            "x509.allow.regex.pattern.comparison": "false",
            "x509.casubjectdn": self.ca_subject_dn,
            "access.token.lifespan": str(int(self.access_token_lifespan.total_seconds())),
            "tls.client.certificate.bound.access.tokens": "true" if self.certificate_bound_tokens else "false",
        }

    def representation(self) -> dict:
        """The body that creates the client (the default client scopes replace the realm's defaults)."""
        return {"clientId": self.client_id, "name": self.client_id, "enabled": self.enabled,
                "description": "device client managed by device-ca", **FIXED,
                "attributes": self.attributes(), "defaultClientScopes": list(self.default_client_scopes),
                "optionalClientScopes": []}

    def differences(self, actual: dict) -> list[str]:
        """Field names where ``actual`` (a client representation from Keycloak) departs from this;
        the default client scopes are compared apart (``scope_changes``)."""
        if not self.enabled:
            return ["enabled"] if actual.get("enabled", True) else []
        fields = [key for key, value in FIXED.items() if actual.get(key) != value]
        if actual.get("enabled") is not True:
            fields.append("enabled")
        have = actual.get("attributes") or {}
        fields += [f"attributes.{key}" for key, value in self.attributes().items() if have.get(key) != value]
        return fields

    def patched(self, actual: dict) -> dict:
        """``actual`` with the managed fields set (a PUT replaces the whole representation)."""
        updated = dict(actual)
        updated["enabled"] = self.enabled
        if self.enabled:
            updated.update(FIXED)
            updated["attributes"] = {**(actual.get("attributes") or {}), **self.attributes()}
        updated.pop("defaultClientScopes", None)
        updated.pop("optionalClientScopes", None)
        return updated

    def scope_changes(self, current: set[str]) -> tuple[set[str], set[str]]:
        """(scopes to add, scopes to remove) to make the client's default scopes the policy's."""
        if not self.enabled:
            return set(), set()
        wanted = set(self.default_client_scopes)
        return wanted - current, current - wanted - {SERVICE_ACCOUNT_SCOPE}
