"""``device-ca restore``: an archive of ``device-ca backup`` into an empty state directory and an
empty database, checked before anything is written and verified after.

Before: every member's SHA-256 against the manifest (ra/archive.py), the token holds a private
key whose public key is each CA certificate's, the manifest's signature verifies with the token's
audit key, the state directory and the database are empty, the policy directory is empty or holds
the archive's policies. After: the CA records in the database are the archive's certificates, the
audit chain is intact and its head is the manifest's ``SEQ:HASH``, every signed checkpoint checks
with the token. A backup is a point in time: certificates issued after it are not in it (see
docs/backup.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from device_ca import files
from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.archive import OpenedArchive, damaged
from device_ca.ra.backup import CRL_FILE, parse_head
from device_ca.ra.checkpoints import AUDIT_KEY, AuditCheckpoints
from device_ca.store import Store, snapshot
from device_ca.token import CaToken

_SHOWN = 5


@dataclass(frozen=True)
class RestoreTarget:
    """Where the state goes (plain data from the settings)."""

    home: Path
    database_url: str
    policy_dir: Path
    pin_file: Path | None = None          # may already be in the state directory


@dataclass
class RestoreReport:
    head: str
    events: int = 0
    checkpoints: int = 0
    certificates: int = 0
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_token(opened: OpenedArchive, token: CaToken) -> list[str]:
    """CONFLICT unless the token holds the key of every CA certificate in the archive and its audit
    key signed the manifest; returns warnings (responder keys the token no longer holds)."""
    for entry in opened.manifest.get("ca", []):
        certificate = x509.load_pem_x509_certificate(opened.read(entry["member"]))
        _check_key(token, entry["name"], entry["key_label"], certificate)
    audit_key = token.find(AUDIT_KEY)
    if audit_key is None:
        raise DeviceCAError(Kind.CONFLICT, f"token {token.label!r} holds no audit key ({AUDIT_KEY}): the archive's "
                            "signature cannot be checked; nothing was restored")
    opened.verify_signature(audit_key.public_key())
    present = set(token.labels())
    missing = [label for label in opened.manifest.get("token", {}).get("responder_keys", []) if label not in present]
    if missing:
        return [f"{len(missing)} OCSP responder keys are not on the token ({', '.join(missing[:_SHOWN])}): "
                "serve makes a new responder certificate at start"]
    return []


def _check_key(token: CaToken, name: str, label: str, certificate: x509.Certificate) -> None:
    key = token.find(label)
    subject = certificate.subject.rfc4514_string()
    if key is None:
        raise DeviceCAError(Kind.CONFLICT, f"token {token.label!r} holds no key {label!r} for the {name} CA "
                            f"certificate ({subject}): restore needs this CA's token; nothing was restored")
    if _spki(key.public_key()) != _spki(certificate.public_key()):
        raise DeviceCAError(Kind.CONFLICT, f"key {label!r} on token {token.label!r} is not the key of the {name} CA "
                            f"certificate ({subject}): another CA's token; nothing was restored")


def _spki(public_key) -> bytes:
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def check_target(opened: OpenedArchive, target: RestoreTarget) -> bool:
    """CONFLICT unless the state directory and the database are empty and the policy directory is empty
    or holds the archive's policies already; returns whether the policies are to be written."""
    kind = opened.manifest["database"]["kind"]
    if snapshot.kind_of(target.database_url) != kind:
        raise DeviceCAError(Kind.MALFORMED, f"the archive holds a {kind} snapshot but the database URL names "
                            f"{snapshot.kind_of(target.database_url)}; restore into the same kind of database")
    if target.home.exists():
        allowed = {target.pin_file.resolve()} if target.pin_file else set()
        if kind == snapshot.SQLITE:
            db = snapshot.sqlite_path(target.database_url).resolve()
            allowed |= {Path(f"{db}{suffix}") for suffix in ("", "-wal", "-shm", "-journal", ".writelock")}
        extra = sorted(p.name for p in target.home.iterdir() if p.resolve() not in allowed)
        if extra:
            raise DeviceCAError(Kind.CONFLICT, f"state directory {target.home} is not empty (holds "
                                f"{', '.join(extra[:_SHOWN])}); restore needs an empty one")
    snapshot.ensure_empty(target.database_url)
    present = _policy_files(target.policy_dir)
    archived = {name.removeprefix("policies/"): opened.read(name) for name in opened.names("policies/")}
    if not present:
        return True
    if present != archived:
        differ = sorted(set(present) ^ set(archived) | {n for n in set(present) & set(archived)
                                                        if present[n] != archived[n]})
        raise DeviceCAError(Kind.CONFLICT, f"policy directory {target.policy_dir} holds other policies than the "
                            f"archive ({', '.join(differ[:_SHOWN])}); empty it or point DEVICE_CA_POLICY_DIR "
                            "at an empty directory")
    return False


def _policy_files(directory: Path) -> dict[str, bytes]:
    if not directory.is_dir():
        return {}
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)}


def restore(opened: OpenedArchive, target: RestoreTarget, write_policies: bool) -> None:
    """Write the archive's state: settings, CA certificates, CRL, policies, then the database."""
    files.secure_state_dir(target.home)
    if "settings/device-ca.toml" in opened.manifest["members"]:
        files.write_atomically(target.home / "device-ca.toml", opened.read("settings/device-ca.toml"), durable=True)
    for name in opened.names("ca/") + ([CRL_FILE] if CRL_FILE in opened.manifest["members"] else []):
        (target.home / name).parent.mkdir(parents=True, exist_ok=True)
        files.publish(target.home / name, opened.read(name))
    if write_policies:
        for name in opened.names("policies/"):
            path = target.policy_dir / name.removeprefix("policies/")
            path.parent.mkdir(parents=True, exist_ok=True)
            files.write_atomically(path, opened.read(name), durable=True)
    snapshot.load(target.database_url, opened.path(opened.manifest["database"]["member"]))


def verify_restored(opened: OpenedArchive, store: Store, checkpoints: AuditCheckpoints, token: CaToken) -> RestoreReport:
    """The restored database against the manifest and the token."""
    manifest = opened.manifest
    expected = parse_head(manifest["audit_head"])
    report = RestoreReport(head=manifest["audit_head"], certificates=int(manifest["database"]["certificates"]))
    records = store.ca_certificates()
    for entry in manifest["ca"]:
        record = records.get(entry["name"])
        archived = x509.load_pem_x509_certificate(opened.read(entry["member"])).public_bytes(Encoding.DER)
        if record is None or record.der != archived or record.key_label != entry["key_label"]:
            report.problems.append(f"the restored {entry['name']} CA record is not the archive's certificate")
            continue
        try:
            _check_key(token, entry["name"], record.key_label, x509.load_der_x509_certificate(record.der))
        except DeviceCAError as exc:
            report.problems.append(exc.detail)
    audit, head = store.verify_audit(expected)
    report.events = audit.events
    report.problems += list(audit.problems)
    if head != manifest["audit_head"]:
        report.problems.append(f"the restored audit head {head} is not the manifest's {manifest['audit_head']}")
    report.checkpoints, signed = checkpoints.verify()
    report.problems += signed
    return report


def check_manifest(opened: OpenedArchive) -> None:
    """MALFORMED unless the manifest holds what a restore reads (its signature is checked later,
    with the token)."""
    m = opened.manifest
    try:
        parse_head(m["audit_head"])
        well_formed = m["database"]["member"] in m["members"] \
            and m["database"]["kind"] in (snapshot.SQLITE, snapshot.POSTGRESQL) \
            and {"issuing", "root"} <= {e["name"] for e in m["ca"]} \
            and all(e["member"] in m["members"] and isinstance(e["key_label"], str) for e in m["ca"])
    except (KeyError, TypeError):
        well_formed = False
    if not well_formed:
        raise damaged("the manifest lacks the database, the audit head or the CA certificates")
