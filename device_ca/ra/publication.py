"""Publishing revocation status for relying parties: OCSP answers (RFC 6960, RFC 9919 profile) and
CRLs (RFC 5280 §5).

A revocation is visible on the very next answer: signed answers for nonce-less single requests
are cached per process until half their validity has passed, keyed by the status they state, and
a cached answer is only reused while nothing was written to the database since its status was
read (SQLite: the change counter every writer moves, store/db.py; on PostgreSQL the status is read
on every request), so a cached answer can never contradict the database. Answers pre-signed by the
server's janitor are served when they state the current status. Requests with a nonce are signed
live. The delegated responder certificate (7 days, key on the token) is rotated two days before it
expires. While the token or the database is unavailable, OCSP answers tryLater (unsigned).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca import ocsp
from device_ca.ca.clock import Clock
from device_ca.ca.crl import RevokedEntry, build_crl
from device_ca.ca.issuer import Issuer
from device_ca.ca.serial import new_serial, to_hex
from device_ca import files
from device_ca.errors import DeviceCAError, Kind
from device_ca.runtime import BoundedCache
from device_ca.store import Store
from device_ca.token import CaToken, about_a_key
from device_ca.store.status import CertStatus, Presigned, StoredCrl

log = logging.getLogger("device_ca.ra.publication")

RESPONDER_VALIDITY = dt.timedelta(days=7)
RESPONDER_KEY_PREFIX = "device-ca-ocsp-"
ROTATE_BEFORE = dt.timedelta(days=2)
OCSP_VALIDITY = dt.timedelta(hours=24)
CRL_VALIDITY = dt.timedelta(hours=24)
# OCSP caches, bounded in bytes (runtime.BoundedCache), per HTTP worker process: answers by CertID
# and status; and, for the hot path, the answers and parses of small plain requests by their bytes
# (at most FAST_REQUEST_BYTES, nothing in them but one or a few CertIDs: the bytes are the CertIDs'
# encoding, so any other request with the same CertIDs differs only by what the answer ignores).
ANSWER_CACHE_BYTES = 32 << 20
FAST_CACHE_BYTES = 8 << 20
FAST_REQUEST_BYTES = 512


@dataclass(frozen=True, eq=False)
class OcspAnswer:
    der: bytes
    this_update: dt.datetime | None = None     # None: an unsigned error response
    next_update: dt.datetime | None = None
    cacheable: bool = False


class StatusPublisher:
    def __init__(self, store: Store, issuer: Callable[[], Issuer], token: CaToken, clock: Clock,
                 crl_path: Path, linter=None, ca: str = "issuing"):
        self.ca = ca
        self.store = store
        self._issuer = issuer
        self.token = token
        self.clock = clock
        self.crl_path = crl_path
        self._file_number: int | None = None      # the CRL number known to be in crl_path
        self.linter = linter
        self._responder: tuple[ocsp.Responder, dt.datetime, int] | None = None
        self._cache = BoundedCache(ANSWER_CACHE_BYTES)      # (CertID, status, responder) -> OcspAnswer
        self._parsed = BoundedCache(FAST_CACHE_BYTES)       # small plain request bytes -> ParsedRequest
        self._fast = BoundedCache(FAST_CACHE_BYTES)         # ... -> (change marker, fresh until, OcspAnswer, status)
        # Answers given by this process, by (status, source): plain integers, cheap on the hot path
        # (web/metrics.py moves them into Prometheus counters). status: good, revoked, unknown, mixed
        # (several CertIDs), or an error response's status; source: presigned, cached, live, unsigned.
        self.answered: dict[tuple[str, str], int] = {}

    # -- OCSP ------------------------------------------------------------------------------

    def respond(self, request_der: bytes, live_allowed: Callable[[], bool] | None = None) -> OcspAnswer:
        """The hot path: a relying party repeating a nonce-less request gets the same signed bytes,
        as long as nothing was committed since their status was read and they are fresh.
        ``live_allowed``: whether this client's budget allows one more answer signed live for its
        nonce; if not, it gets the nonce-less answer (RFC 8954 §2.1 lets a responder leave the nonce
        out), pre-signed or cached."""
        try:
            marker = self.store.status.change_marker()
        except DeviceCAError as exc:
            log.error("OCSP: %s", exc.detail)
            return self.unsigned(ocsp.status_for_error(exc))
        hit = self._fast.get(request_der)
        if hit is not None and hit[0] == marker and self.clock.now() < hit[1]:
            self._count(hit[3], "cached")
            return hit[2]
        answer, status, source = self._respond(request_der, live_allowed)
        self._count(status, source)
        if answer.cacheable and request_der in self._parsed:          # a small plain request (see _respond)
            self._fast.put(request_der, (marker, answer.this_update + (answer.next_update - answer.this_update) / 2,
                                         answer, status), len(request_der) + len(answer.der))
        return answer

    def _count(self, status: str, source: str) -> None:
        key = (status, source)
        self.answered[key] = self.answered.get(key, 0) + 1

    def unsigned(self, status: str) -> OcspAnswer:
        """An unsigned error response (RFC 6960 §2.3) with ``status``, counted."""
        self._count(status, "unsigned")
        return OcspAnswer(ocsp.error_response(status))

    def _respond(self, request_der: bytes,
                 live_allowed: Callable[[], bool] | None = None) -> tuple[OcspAnswer, str, str]:
        """The answer, the status it states and where it came from (see ``answered``)."""
        parsed = self._parsed.get(request_der)
        if parsed is None:
            try:
                parsed = ocsp.parse_request(request_der)
            except ocsp.MalformedRequest:
                return OcspAnswer(ocsp.error_response("malformedRequest")), "malformedRequest", "unsigned"
            if parsed.nonce is None and parsed.plain and len(request_der) <= FAST_REQUEST_BYTES:
                self._parsed.put(request_der, parsed, 2 * len(request_der))   # relying parties repeat requests
        try:
            responder, _, responder_id = self._active()
            if not all(responder.matches(c) for c in parsed.cert_ids):
                return OcspAnswer(ocsp.error_response("unauthorized")), "unauthorized", "unsigned"
            if parsed.nonce is not None and live_allowed is not None and not live_allowed():
                parsed = dataclasses.replace(parsed, nonce=None)      # over budget: answered without the nonce
            if parsed.nonce is None and len(parsed.cert_ids) == 1:
                return self._cached(responder, responder_id, parsed.cert_ids[0])
            now = self.clock.now()
            stated: set[str] = set()

            def lookup(serial: int) -> ocsp.Status:
                status = self.lookup(serial)
                stated.add(status.kind)
                return status

            answer = OcspAnswer(ocsp.respond(responder, parsed, lookup), now, now + responder.validity)
            return answer, stated.pop() if len(stated) == 1 else "mixed", "live"
        except DeviceCAError as exc:
            log.error("OCSP: %s", exc.detail)
            status = ocsp.status_for_error(exc)
            return OcspAnswer(ocsp.error_response(status)), status, "unsigned"

    def lookup(self, serial: int) -> ocsp.Status:
        """Never good for a serial this CA did not record as issued (reserved-only ones included)."""
        return _status(self.store.status.status(to_hex(serial)))

    def _cached(self, responder: ocsp.Responder, responder_id: int,
                cert_id: ocsp.CertId) -> tuple[OcspAnswer, str, str]:
        """A signed answer for one CertID: from this process's cache, else the stored pre-signed one
        if it states the current status, else signed now; with its status and source."""
        record, presigned = self.store.status.status_and_presigned(to_hex(cert_id.serial))
        status = _status(record)
        key = (cert_id, status, id(responder))
        now = self.clock.now()
        hit = self._cache.get(key)
        if hit is not None and now < hit.this_update + (hit.next_update - hit.this_update) / 2:
            return hit, status.kind, "cached"
        if presigned is not None and presigned.status == status.kind and presigned.responder_id == responder_id \
                and cert_id.hash_algorithm == "sha1" and now < presigned.this_update + OCSP_VALIDITY / 2 \
                and presigned.next_update <= responder.responder_cert.not_valid_after_utc:
            answer, source = OcspAnswer(presigned.der, presigned.this_update, presigned.next_update, True), "presigned"
        else:
            answer = OcspAnswer(responder.sign_response(cert_id, status), now,
                                min(now + responder.validity, responder.responder_cert.not_valid_after_utc), True)
            source = "live"
        self._cache.put(key, answer, len(answer.der))
        return answer, status.kind, source

    def responder(self) -> ocsp.Responder:
        return self._active()[0]

    def _active(self) -> tuple[ocsp.Responder, dt.datetime, int]:
        """(responder, its certificate's notAfter, its row id), reloaded when rotation is near."""
        now = self.clock.now()
        current = self._responder
        if current is not None and current[1] - now > ROTATE_BEFORE / 2:
            return current
        stored = self.store.status.active_responder(self.ca, now)
        if stored is None:
            raise DeviceCAError(Kind.INTERNAL, "no OCSP responder certificate: run 'device-ca ocsp refresh'")
        key = self.token.find(stored.key_label)
        if key is None:
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, f"OCSP responder key {stored.key_label!r} is not on the token")
        certificate = x509.load_der_x509_certificate(stored.der)
        responder = ocsp.Responder(self._issuer().certificate, certificate, key, self.clock, OCSP_VALIDITY)
        self._responder = (responder, certificate.not_valid_after_utc, stored.id)
        return self._responder

    def presign(self, limit: int = 5000) -> int:
        """Sign and store answers for certificates that have none, or a stale one: another status
        (revoked since), another responder (rotated), or signed more than a quarter of the validity
        ago, so a stored answer is always well inside its first half when it is served. Returns how
        many were signed; the server's janitor calls this every few seconds."""
        responder, _, responder_id = self._active()
        now = self.clock.now()
        due = self.store.status.presign_due(self.ca, responder_id, now - OCSP_VALIDITY / 4, now, limit)
        signed = []
        for serial, record in due:
            at = self.clock.now()
            der = responder.sign_response(responder.cert_id(int(serial, 16)), _status(record))
            signed.append((serial, Presigned(record.status, responder_id, at,
                                             min(at + responder.validity, responder.responder_cert.not_valid_after_utc),
                                             der)))
        self.store.status.save_presigned(signed)
        return len(signed)

    def ensure_responder(self) -> tuple[x509.Certificate, bool]:
        """The active responder certificate, a new one (key generated on the token) if it is due,
        or if its key is not usable on the token: missing (a key deleted, or a row whose key was
        never made) or ambiguous (two keys under one label, as two nodes starting in the same
        second used to make). The start repairs the token's state instead of refusing forever."""
        now = self.clock.now()
        stored, problem = self._responder_problem(now)
        if problem is None:
            return x509.load_der_x509_certificate(stored.der), False
        if stored is not None:
            log.warning("OCSP responder key %s %s: making a new responder", stored.key_label, problem)
        issuer = self._issuer()
        label = f"{RESPONDER_KEY_PREFIX}{now:%Y%m%d%H%M%S}-{secrets.token_hex(6)}"     # unique across nodes
        key = self.token.generate(label, issuer.key_type)
        serial = new_serial()
        certificate = ocsp.build_responder_certificate(issuer.certificate, issuer.signer, key.public_key(), self.clock,
                                                       RESPONDER_VALIDITY, serial=serial, linter=self.linter)
        der = certificate.public_bytes(Encoding.DER)
        self.store.status.add_responder(self.ca, label, to_hex(serial), der, certificate.not_valid_after_utc, now,
                                        hashlib.sha256(certificate.tbs_certificate_bytes).hexdigest())
        self._responder = None
        log.info("new OCSP responder certificate %s (key %s)", to_hex(serial), label)
        return certificate, True

    def _responder_problem(self, now: dt.datetime):
        """(the active responder's row or None, why a new responder is needed or None)."""
        stored = self.store.status.active_responder(self.ca, now)
        if stored is None:
            return None, "none"
        if stored.not_after - now <= ROTATE_BEFORE:
            return stored, "is due for rotation"
        return stored, self._key_problem(stored.key_label)

    def has_responder(self) -> bool:
        """Whether this CA has an OCSP responder certificate at all (a generation just made by a
        rollover has none until the janitor's next round)."""
        return self._responder is not None or self.store.status.active_responder(self.ca, self.clock.now()) is not None

    def ready(self) -> bool:
        """Whether a node may serve without any CA-wide work first: a usable responder not due for
        rotation, and a CRL that is not due."""
        return self._responder_problem(self.clock.now())[1] is None and not self.crl_due()

    def orphan_responder_keys(self) -> list[str]:
        """Responder keys on the token with no responder certificate in the database: a start that
        died between generating the key and storing its certificate. Harmless (unique labels, never
        used); reported so that an operator can delete them."""
        known = self.store.status.responder_key_labels()
        return sorted(label for label in self.token.labels()
                      if label.startswith(RESPONDER_KEY_PREFIX) and label not in known)

    def _key_problem(self, label: str) -> str | None:
        try:
            return None if self.token.find(label) is not None else "is not on the token"
        except DeviceCAError as exc:
            if not about_a_key(exc):
                raise                                  # the token itself is unavailable: nothing to repair
            return f"cannot be used ({exc.detail})"

    # -- CRL -------------------------------------------------------------------------------

    def generate_crl(self) -> StoredCrl:
        """Sign, verify, store and publish (atomically) a new CRL with a new number."""
        issuer = self._issuer()
        number = self.store.status.reserve_crl_number(self.ca)
        try:
            entries = [RevokedEntry(int(serial, 16), at, reason) for serial, at, reason in self.store.status.revoked(self.ca)]
            now = self.clock.now()
            crl = build_crl(issuer.certificate, issuer.signer, entries, number, now, now + CRL_VALIDITY, issuer.hash)
            der = crl.public_bytes(Encoding.DER)
            self.store.status.save_crl(self.ca, number, crl.last_update_utc, crl.next_update_utc, len(entries), der)
        except Exception:
            self.store.status.crl_dirty_again(self.ca)      # a revocation must not be lost from the next run
            raise
        self.crl_path.parent.mkdir(parents=True, exist_ok=True)
        files.publish(self.crl_path, der)
        self._file_number = number
        log.info("CRL %d published with %d entries", number, len(entries))
        return StoredCrl(number, crl.last_update_utc, crl.next_update_utc, der)

    def sync_crl_file(self) -> bool:
        """Write the newest CRL of the database to ``crl_path`` when the file holds an older one
        (another node signed it): every node's file follows the newest CRL within a janitor round."""
        number = self.store.status.latest_crl_number(self.ca)       # every round: the number only
        if number is None or number == self._file_number:
            return False
        current = _crl_number(self.crl_path)
        if current is not None and current >= number:
            self._file_number = current
            return False
        latest = self.store.status.latest_crl(self.ca)
        self.crl_path.parent.mkdir(parents=True, exist_ok=True)
        files.publish(self.crl_path, latest.der)
        self._file_number = latest.number
        log.info("CRL %d (signed elsewhere) written to %s", latest.number, self.crl_path)
        return True

    def crl_due(self) -> bool:
        latest = self.store.status.latest_crl_times(self.ca)        # every round: no CRL read
        if latest is None or self.store.status.crl_dirty(self.ca):
            return True
        _, this_update, next_update = latest
        return self.clock.now() >= this_update + (next_update - this_update) / 2

    def latest_crl(self) -> StoredCrl | None:
        return self.store.status.latest_crl(self.ca)


def _status(record: CertStatus | None) -> ocsp.Status:
    if record is None:
        return ocsp.Status("unknown")
    if record.status == "revoked":
        return ocsp.Status("revoked", record.revoked_at, record.reason)
    return ocsp.Status("good")


def _crl_number(path: Path) -> int | None:
    """The CRL number of the CRL in ``path``; None if there is none or it cannot be read."""
    try:
        crl = x509.load_der_x509_crl(path.read_bytes())
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
