"""The root's own work after ``init``: its CRL (RFC 5280 §5), which lists the issuing CA
certificates it revoked, and the revocation of an issuing CA (the compromise drill).

The root CRL is long-lived (``ROOT_CRL_VALIDITY``) because the root key may live on a token that is
connected only for root operations (docs/root-crl.md, offline root). The server's janitor signs a
new one when half its validity has passed or a revocation asks for one, if the root key is on the
token; without it, it warns (``refresh`` returns why) and the operator signs it with
``device-ca crl generate --root`` during a ceremony. Each signature is audited (``crl.signed``).

Revoking an issuing CA is one transaction (state on the CA record, audit ``ca.revoked``, the root
CRL marked due), then the root CRL is signed at once. From then on the reservation of every
certificate of that CA is refused (store/issuance.py), on every node, with CA_UNAVAILABLE.
"""
from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca import files
from device_ca.ca.clock import Clock
from device_ca.ca.crl import REASONS, RevokedEntry, build_crl
from device_ca.ca.csr import hash_for_key_type, key_type_of
from device_ca.errors import DeviceCAError, Kind, malformed
from device_ca.ra.administration import ROOT
from device_ca.store import AuditEvent, CaRecord, Store
from device_ca.store.status import StoredCrl
from device_ca.token import CaToken

log = logging.getLogger("device_ca.ra.rootca")

ROOT_CRL_VALIDITY = dt.timedelta(days=365)
# RFC 5280 §5.3.1: aACompromise is about attribute authorities, not CAs.
CA_REVOCATION_REASONS = tuple(r for r in REASONS if r != "aACompromise")
WARN_EVERY = dt.timedelta(hours=1)      # "root CRL due, root key absent": once an hour, not every round


class RootAuthority:
    def __init__(self, store: Store, token: CaToken, clock: Clock, crl_path: Path, linter=None):
        self.store = store
        self.token = token
        self.clock = clock
        self.crl_path = crl_path
        self.linter = linter            # CRL DER -> None, raising on a finding (pre-publication lint)
        self._file_number: int | None = None
        self._warned_at: dt.datetime | None = None
        self.problem: str | None = None         # why a due root CRL was not signed in the last refresh

    def _record(self) -> CaRecord:
        record = self.store.ca_certificates().get(ROOT)
        if record is None:
            raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
        return record

    def key_present(self) -> bool:
        """Whether the root key is on the token now (an offline root is connected only for ceremonies)."""
        return self.token.find(self._record().key_label) is not None

    def _signer(self, record: CaRecord, doing: str):
        key = self.token.find(record.key_label)
        if key is None:
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, f"the root key {record.key_label!r} is not on token "
                                f"{self.token.label!r}: connect the root token to {doing}; nothing was changed")
        return key

    # -- the root CRL ------------------------------------------------------------------------

    def generate_crl(self, actor: str) -> StoredCrl:
        """Sign, verify, store (with its audit event) and publish a new root CRL."""
        record = self._record()
        signer = self._signer(record, "sign the root CRL")
        root = x509.load_der_x509_certificate(record.der)
        number = self.store.status.reserve_crl_number(ROOT)
        try:
            entries = [RevokedEntry(int(serial, 16), at, reason) for serial, at, reason in self.store.revoked_cas()]
            now = self.clock.now()
            next_update = min(now + ROOT_CRL_VALIDITY, root.not_valid_after_utc)
            crl = build_crl(root, signer, entries, number, now, next_update,
                            hash_for_key_type(key_type_of(root.public_key())))
            der = crl.public_bytes(Encoding.DER)
            if self.linter is not None:
                self.linter(der)
            self.store.status.save_crl(ROOT, number, crl.last_update_utc, crl.next_update_utc, len(entries), der,
                                       AuditEvent(action="crl.signed", actor=actor, at=now, details={
                                           "ca": ROOT, "number": number, "entries": len(entries),
                                           "next_update": crl.next_update_utc.strftime("%Y-%m-%dT%H:%M:%SZ")}))
        except Exception:
            self.store.status.crl_dirty_again(ROOT)
            raise
        self._publish(number, der)
        log.info("root CRL %d signed with %d entries", number, len(entries))
        return StoredCrl(number, crl.last_update_utc, crl.next_update_utc, der)

    def _publish(self, number: int, der: bytes) -> None:
        self.crl_path.parent.mkdir(parents=True, exist_ok=True)
        files.publish(self.crl_path, der)
        self._file_number = number

    def latest_crl(self) -> StoredCrl | None:
        return self.store.status.latest_crl(ROOT)

    def crl_due(self) -> bool:
        """No root CRL yet, a revocation since the last one, or half its validity passed."""
        latest = self.store.status.latest_crl_times(ROOT)
        if latest is None or self.store.status.crl_dirty(ROOT):
            return True
        _, this_update, next_update = latest
        return self.clock.now() >= this_update + (next_update - this_update) / 2

    def refresh(self, actor: str = "system:janitor") -> StoredCrl | None:
        """The janitor's job: a new root CRL if one is due and the root key is here (None if not;
        ``problem`` then says why when one is due); writes the newest to the file."""
        self.problem = None
        if not self.store.ca_certificates().get(ROOT) or not self.crl_due():
            self.sync_crl_file()
            return None
        if not self.key_present():
            latest = self.store.status.latest_crl_times(ROOT)
            why = ("the root CRL is due but the root key is not on the token: sign it with "
                   "'device-ca crl generate --root' while the root token is connected"
                   + (f" (the current one expires {latest[2]:%Y-%m-%dT%H:%M:%SZ})" if latest else ""))
            now = self.clock.now()
            if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
                log.warning(why)
                self._warned_at = now
            self.problem = why
            self.sync_crl_file()
            return None
        return self.generate_crl(actor)

    def sync_crl_file(self) -> bool:
        """Bring ``crl_path`` up to the newest root CRL in the database (signed elsewhere perhaps)."""
        number = self.store.status.latest_crl_number(ROOT)
        if number is None or number == self._file_number:
            return False
        latest = self.store.status.latest_crl(ROOT)
        self._publish(latest.number, latest.der)
        return True

    # -- revoking an issuing CA ---------------------------------------------------------------

    def revoke_issuing(self, name: str, reason: str, actor: str) -> tuple[CaRecord, StoredCrl]:
        """Revoke the issuing CA ``name`` and publish it in a new root CRL. The root key must be on
        the token (checked before anything changes): a revocation nobody can see is not done."""
        if reason not in CA_REVOCATION_REASONS:
            raise malformed(f"unknown revocation reason {reason!r} for a CA (one of: {', '.join(CA_REVOCATION_REASONS)})")
        if name == ROOT:
            raise malformed("the root cannot be revoked in its own CRL: a compromised root is replaced as trust "
                            "anchor at every relying party (docs/root-crl.md)")
        records = self.store.ca_certificates()
        target, root = records.get(name), records.get(ROOT)
        if target is None or root is None:
            raise DeviceCAError(Kind.NOT_FOUND, f"no issuing CA named {name!r}")
        certificate = x509.load_der_x509_certificate(target.der)
        if certificate.issuer != x509.load_der_x509_certificate(root.der).subject:
            raise malformed(f"CA {name!r} was not issued by this root")
        if target.status == "revoked":
            raise DeviceCAError(Kind.CONFLICT, f"CA {name!r} was revoked already ({target.revocation_reason})")
        self._signer(root, "revoke an issuing CA")
        revoked = self.store.revoke_ca(name, reason, self.clock.now(), actor, crl_of=ROOT)
        log.warning("issuing CA %s (serial %s) revoked by %s: %s", name, revoked.serial, actor, reason)
        return revoked, self.generate_crl(actor)


def revoke_certificates_of(ra, store: Store, name: str, actor: str) -> list[str]:
    """After a compromise: revoke (cACompromise) every good certificate the issuing CA ``name``
    issued, so that relying parties that check only the leaf (OCSP, the issuing CA's CRL) refuse
    them too and Keycloak disables their clients (the outbox, as for any revocation)."""
    done = []
    for record in store.certificates(status="good"):
        if record.issuer != name:
            continue
        try:
            ra.revoke(record.serial, "cACompromise", actor=actor)
            done.append(record.serial)
        except DeviceCAError as exc:
            if exc.kind is not Kind.CONFLICT:           # revoked meanwhile: nothing left to do
                raise
    return done
