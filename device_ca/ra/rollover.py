"""Issuing-CA generations: rollover to a new issuing key signed by the root, and retirement of an
old generation once nothing it issued is still valid (RFC 5280 §3.4 key rollover, §5: a CA keeps
publishing status for its own certificates until they expire).

The first issuing CA is ``issuing``; rollover N adds ``issuing-N`` with a key generated on the token
under a new label (never extractable), a distinct subject (``... Issuing CA GN``, so that a relying
party never matches one generation's CRL to another's certificates) and the root's CRL DP and AIA.
The newest generation issues; every older one that is neither retired nor revoked goes on signing
its CRL and OCSP answers (the janitor runs its jobs) until the last certificate it issued has
expired, or its own certificate has; then ``retire_due`` marks it ``retired`` (audit ``ca.retired``).
A running ``device-ca serve`` issues with the generation that was newest when it started: restart
each node after a rollover (its TLS listener must also trust the new generation's client
certificates).
"""
from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca.authority import CaProfile, build_issuing
from device_ca.ca.clock import Clock
from device_ca.ca.csr import key_type_of
from device_ca.ca.issuer import Linter, PublicUrls
from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.administration import CA_KEY_TYPES, ISSUING, ROOT
from device_ca.store import AuditEvent, CaRecord, Store
from device_ca.token import CaToken

log = logging.getLogger("device_ca.ra.rollover")

ISSUING_KEY_PREFIX = "device-ca-issuing-"


@dataclass(frozen=True)
class Generation:
    name: str
    generation: int
    record: CaRecord
    certificate: x509.Certificate
    state: str          # current | previous (still signs status) | retired | revoked

    @property
    def signs_status(self) -> bool:
        """Whether its CRL and OCSP answers are still signed (a revoked CA's too: its CRL lists them)."""
        return self.state != "retired"

    @property
    def trusted(self) -> bool:
        """Whether its certificates may authenticate a device (re-enrollment) and cacerts serves it."""
        return self.state in ("current", "previous")


def generations(records: dict[str, CaRecord]) -> list[Generation]:
    """The issuing CAs, oldest first; the newest is the one that issues."""
    issuing = sorted((r for n, r in records.items() if n != ROOT), key=lambda r: (r.created_at, _number(r.name)))
    out = []
    for i, r in enumerate(issuing, 1):
        state = r.status if r.status in ("retired", "revoked") else "current" if i == len(issuing) else "previous"
        out.append(Generation(r.name, i, r, x509.load_der_x509_certificate(r.der), state))
    return out


def current(records: dict[str, CaRecord]) -> CaRecord | None:
    """The issuing CA that issues: the newest generation (if it is revoked, issuance is refused)."""
    gens = generations(records)
    return gens[-1].record if gens else None


def trusted_issuing(records: dict[str, CaRecord], now: dt.datetime) -> list[x509.Certificate]:
    """Issuing CA certificates still valid, newest first: what cacerts serves and whose
    certificates may re-enroll."""
    return [g.certificate for g in reversed(generations(records))
            if g.trusted and g.certificate.not_valid_before_utc <= now < g.certificate.not_valid_after_utc]


def _number(name: str) -> int:
    return int(name.rsplit("-", 1)[1]) if name.startswith(ISSUING + "-") and name.rsplit("-", 1)[1].isdigit() else 1


class IssuingRollover:
    def __init__(self, store: Store, token: CaToken, clock: Clock, linter: Linter | None, public_url: str):
        self.store = store
        self.token = token
        self.clock = clock
        self.linter = linter
        self.public_url = public_url

    def rollover(self, key_type: str | None, actor: str) -> CaRecord:
        """A new issuing CA generation: key on the token, certificate signed by the root, linted
        before it is stored. The root key must be on the token (checked before anything changes)."""
        records = self.store.ca_certificates()
        root_record, previous = records.get(ROOT), current(records)
        if root_record is None or previous is None:
            raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
        key_type = key_type or previous.key_type
        if key_type not in CA_KEY_TYPES:
            raise DeviceCAError(Kind.MALFORMED, f"CA key type must be one of {', '.join(CA_KEY_TYPES)}")
        root_key = self.token.find(root_record.key_label)
        if root_key is None:
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, f"the root key {root_record.key_label!r} is not on token "
                                f"{self.token.label!r}: connect the root token to roll the issuing CA over; "
                                "nothing was changed")
        root = x509.load_der_x509_certificate(root_record.der)
        now = self.clock.now()
        if now >= root.not_valid_after_utc:
            raise DeviceCAError(Kind.CONFLICT, "the root has expired: a new root is needed (docs/rollover.md)")
        generation = max(_number(n) for n in records if n != ROOT) + 1
        name = f"{ISSUING}-{generation}"
        if name in records:
            raise DeviceCAError(Kind.CONFLICT, f"a CA named {name!r} exists already")
        label = f"{ISSUING_KEY_PREFIX}{now:%Y%m%d%H%M%S}-{secrets.token_hex(6)}"      # unique by construction
        key = self.token.generate(label, key_type)
        certificate = build_issuing(root, root_key, key.public_key(), _profile(root, x509.load_der_x509_certificate(
            previous.der)), self.clock, self.linter, root_urls=PublicUrls(self.public_url, ROOT),
            generation=generation)
        record = CaRecord(name=name, key_label=label, key_type=key_type_of(certificate.public_key()),
                          der=certificate.public_bytes(Encoding.DER), serial=format(certificate.serial_number, "x"),
                          not_after=certificate.not_valid_after_utc, created_at=now)
        self.store.add_issuing_ca(record, AuditEvent(
            action="ca.rollover", actor=actor, at=now, serial=record.serial,
            details={"ca": name, "generation": generation, "previous": previous.name, "key_type": key_type,
                     "key_label": label, "token": self.token.label,
                     "not_after": record.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")}))
        log.warning("issuing CA rolled over by %s: %s (serial %s, key %s) follows %s", actor, name, record.serial,
                    label, previous.name)
        return record

    def retire_due(self, actor: str = "system:janitor") -> list[str]:
        """Retire every older generation whose certificates (and revoked ones) have all expired, or
        whose own certificate has: its CRL and OCSP work stops. Returns the names retired."""
        now = self.clock.now()
        counts = None
        retired = []
        for g in generations(self.store.ca_certificates()):
            if g.state != "previous":
                continue
            if counts is None:
                counts = self.store.issuer_counts(now)
            last = (counts.get(g.name) or {}).get("last_not_after")
            if last is not None and now < g.certificate.not_valid_after_utc:
                continue
            if self.store.retire_ca(g.name, AuditEvent(action="ca.retired", actor=actor, at=now, serial=g.record.serial,
                                                       details={"ca": g.name, "generation": g.generation})):
                log.info("issuing CA %s retired: nothing it issued is still valid", g.name)
                retired.append(g.name)
        return retired


def _profile(root: x509.Certificate, previous: x509.Certificate) -> CaProfile:
    """The old generation's organization, lifetime and name constraints, for the new one."""
    organization = root.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    dns, uri = [], []
    try:
        constraints = previous.extensions.get_extension_for_class(x509.NameConstraints).value
        for name in constraints.permitted_subtrees or ():
            (dns if isinstance(name, x509.DNSName) else uri).append(name.value)
    except x509.ExtensionNotFound:
        pass
    return CaProfile(organization=organization[0].value if organization else "device-ca",
                     issuing_validity=previous.not_valid_after_utc - previous.not_valid_before_utc,
                     permitted_dns=tuple(dns), permitted_uri=tuple(uri))
