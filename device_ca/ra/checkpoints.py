"""Audit checkpoints: the head of the audit chain (event ``seq`` and its hash) signed with a
dedicated, non-extractable key on the token (label ``device-ca-audit``, EC P-256 and ECDSA with
SHA-256; RSA 3072 and PKCS #1 v1.5 with SHA-256 on a token that cannot make EC keys, such as
openCryptoki 3.8's soft token). Someone who can write the database but not use the token can rewrite the chain
consistently, but not the checkpoints: ``verify`` finds each stored checkpoint's event in the chain
with the same hash and checks its signature against the token's key.

The janitor signs one at least every minute in which events were added and after every CRL it
publishes; the newest is served at ``GET /audit/checkpoint`` (see ``as_json``), so that relying
parties and operators can keep copies elsewhere.

What is signed (ASCII, ``at`` in whole seconds, UTC)::

    device-ca audit checkpoint
    seq <seq>
    head <hex SHA-256 of event seq>
    at <YYYY-MM-DDTHH:MM:SSZ>
"""
from __future__ import annotations

import base64
import logging

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from device_ca.ca.clock import Clock
from device_ca.errors import DeviceCAError, Kind
from device_ca.store import AuditCheckpoint, Store
from device_ca.token import CaToken

log = logging.getLogger("device_ca.ra.checkpoints")

AUDIT_KEY = "device-ca-audit"
AUDIT_KEY_TYPES = ("ec:P-256", "rsa:3072")  # the first one the token can make


def audit_key_type(token: CaToken) -> str:
    """The audit key type for ``token``: EC P-256 where it can make EC keys, else RSA 3072."""
    for key_type in AUDIT_KEY_TYPES[:-1]:
        if token.can_generate(key_type):
            return key_type
    return AUDIT_KEY_TYPES[-1]


def _is_ec(public) -> bool:
    return isinstance(public, ec.EllipticCurvePublicKey)


def _sign(key, data: bytes) -> bytes:
    if _is_ec(key.public_key()):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _verify(public, signature: bytes, data: bytes) -> None:
    if _is_ec(public):
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


def message(seq: int, head_hash: str, at) -> bytes:
    return (f"device-ca audit checkpoint\nseq {seq}\nhead {head_hash}\n"
            f"at {at.strftime('%Y-%m-%dT%H:%M:%SZ')}\n").encode("ascii")


class AuditCheckpoints:
    def __init__(self, store: Store, token: CaToken, clock: Clock):
        self.store = store
        self.token = token
        self.clock = clock

    def ensure_key(self):
        """The audit key's signer, made on the token if it has none (``init`` makes it; a CA
        initialised before checkpoints existed gets it on the first checkpoint)."""
        key = self.token.find(AUDIT_KEY)
        if key is None:
            key = self.token.generate(AUDIT_KEY, audit_key_type(self.token))
            log.info("made the audit checkpoint key %s on the token", AUDIT_KEY)
        return key

    def sign(self, force: bool = False) -> AuditCheckpoint | None:
        """Sign the current head if events were added since the newest checkpoint (``force``: in
        any case, as after a CRL is published); the checkpoint stored, or None."""
        seq, head_hash = self.store.audit_head()
        newest = self.store.newest_audit_checkpoint()
        if seq == 0 or (not force and newest is not None and newest.seq == seq):
            return None
        at = self.clock.now()
        signature = _sign(self.ensure_key(), message(seq, head_hash, at))
        checkpoint = AuditCheckpoint(seq, head_hash, at, signature)
        self.store.add_audit_checkpoint(checkpoint)
        return checkpoint

    def verify(self) -> tuple[int, list[str]]:
        """Every stored checkpoint against the chain and the token's audit key: (checkpoints
        checked, problems)."""
        stored = self.store.audit_checkpoints()
        if not stored:
            return 0, []
        key = self.token.find(AUDIT_KEY)
        if key is None:
            return len(stored), [f"{len(stored)} audit checkpoints, but the token holds no audit key "
                                 f"({AUDIT_KEY}) to check them with"]
        public = key.public_key()
        hashes_now = self.store.audit_event_hashes({c.seq for c in stored})
        problems = []
        for c in stored:
            try:
                _verify(public, c.signature, message(c.seq, c.head_hash, c.at))
            except InvalidSignature:
                problems.append(f"checkpoint of event {c.seq} at {c.at:%Y-%m-%dT%H:%M:%SZ}: bad signature "
                                "(not made by the token's audit key)")
                continue
            if hashes_now.get(c.seq) != c.head_hash:
                problems.append(f"checkpoint of event {c.seq} at {c.at:%Y-%m-%dT%H:%M:%SZ}: the chain no longer "
                                "holds that event with the signed hash (rewritten, rolled back or truncated)")
        return len(stored), problems

    def newest(self) -> dict | None:
        c = self.store.newest_audit_checkpoint()
        return None if c is None else self.as_json(c)

    def as_json(self, c: AuditCheckpoint) -> dict:
        key = self.token.find(AUDIT_KEY)
        if key is None:
            raise DeviceCAError(Kind.HSM_UNAVAILABLE, f"audit key {AUDIT_KEY} not on the token")
        spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return {"seq": c.seq, "head": c.head_hash, "at": c.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "message": base64.b64encode(message(c.seq, c.head_hash, c.at)).decode(),
                "algorithm": "ecdsa-with-SHA256" if _is_ec(key.public_key()) else "sha256WithRSAEncryption",
                "signature": base64.b64encode(c.signature).decode(),
                "public_key": base64.b64encode(spki).decode()}
