"""``device-ca backup``: one archive (ra/archive.py) from which ``device-ca restore`` rebuilds the CA's
state on a new machine that has the same token.

In it: a consistent database snapshot (store/snapshot.py) and the audit head inside it, the
policy directory, ``device-ca.toml`` and the non-secret settings, the CA certificates, the newest
CRL. Never in it: a PIN or PIN file, the Keycloak or any other secret (they live in the
environment or in files the settings name, never in the state directory's settings), a password
of the database URL (a settings file carrying one is archived without that setting), the TLS
server key (``serve`` issues a new one). Keys stay on the token: see docs/backup.md.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca import files
from device_ca.ca.clock import Clock
from device_ca.config import Settings
from device_ca.errors import DeviceCAError, Kind
from device_ca.ra import archive
from device_ca.ra.checkpoints import AUDIT_KEY
from device_ca.store import AuditEvent, Store
from device_ca.store import snapshot

CA_ORDER = ("root", "issuing")
CRL_FILE = "crl/issuing.crl"


@dataclass(frozen=True)
class BackupSources:
    """Where the state to archive lives (plain data from the settings)."""

    database_url: str
    home: Path
    policy_dir: Path
    token_label: str
    settings: dict = field(default_factory=dict)      # the non-secret settings, for the manifest

    @classmethod
    def of(cls, settings: Settings) -> "BackupSources":
        return cls(settings.database_url, settings.home, settings.policy_dir, settings.hsm_token,
                   settings_summary(settings))


@dataclass(frozen=True)
class Backup:
    path: Path
    sha256: str
    manifest: dict


def make_backup(out: Path, sources: BackupSources, audit_key, store: Store, clock: Clock, actor: str) -> Backup:
    """Write the archive to ``out`` (0600, whole or not at all; an existing file is refused) and
    record ``backup.created`` in the audit log (after the snapshot: the archive's head is the one
    before that event)."""
    out = Path(out).absolute()
    if out.exists():
        raise DeviceCAError(Kind.CONFLICT, f"{out} exists; refusing to overwrite it")
    if out.parent.resolve() == sources.home.resolve() or sources.home.resolve() in out.parent.resolve().parents:
        raise DeviceCAError(Kind.MALFORMED, "write the backup outside the state directory (it is what a restore "
                            "needs empty)")
    work = Path(tempfile.mkdtemp(prefix=".device-ca-backup-", dir=out.parent))      # 0700, beside the archive
    try:
        database, contents = snapshot.dump(sources.database_url, work)
        if not all(name in contents.ca for name in CA_ORDER):
            raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
        now = clock.now().replace(microsecond=0)
        members: dict[str, Path | bytes] = {f"database/{database.name}": database}
        names = list(CA_ORDER) + sorted(n for n in contents.ca if n not in CA_ORDER)   # rolled-over generations
        pems = {name: x509.load_der_x509_certificate(contents.ca[name][1]).public_bytes(Encoding.PEM) for name in names}
        members.update({f"ca/{name}.pem": pem for name, pem in pems.items()})
        newest = max((n for n in names if n != "root"),
                     key=lambda n: x509.load_der_x509_certificate(contents.ca[n][1]).not_valid_before_utc)
        members["ca/chain.pem"] = pems[newest] + pems["root"]
        by_age = sorted((n for n in names if n != "root"),
                        key=lambda n: x509.load_der_x509_certificate(contents.ca[n][1]).not_valid_before_utc,
                        reverse=True)
        members["ca/trust.pem"] = b"".join(pems[n] for n in by_age) + pems["root"]    # Keycloak's trust store
        if (sources.home / CRL_FILE).is_file():
            members[CRL_FILE] = (sources.home / CRL_FILE).read_bytes()
        settings_file, dropped = settings_toml(sources.home / "device-ca.toml")
        if settings_file is not None:
            members["settings/device-ca.toml"] = settings_file
        policy_files, outside = _policy_members(sources.policy_dir)
        members.update(policy_files)
        kind = snapshot.kind_of(sources.database_url)
        manifest = {
            "format": archive.FORMAT,
            "created_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "created_by": actor,
            "audit_head": f"{contents.head[0]}:{contents.head[1]}",
            "database": {"kind": kind, "member": f"database/{database.name}", "revision": contents.revision,
                         "certificates": contents.certificates},
            "ca": [{"name": name, "key_label": contents.ca[name][0], "member": f"ca/{name}.pem"} for name in names],
            "token": {"label": sources.token_label, "audit_key": AUDIT_KEY,
                      "responder_keys": list(contents.responder_labels)},
            "policy_dir": str(sources.policy_dir),
            "settings": sources.settings,
            "not_archived": _not_archived(dropped, outside),
            "members": {name: dict(zip(("sha256", "size"), archive.digest(content)))
                        for name, content in members.items()},
        }
        manifest_bytes, signature = archive.sign_manifest(manifest, audit_key)
        with files.atomic_writer(out, files.PRIVATE, durable=True) as f:
            archive.write_archive(f, manifest_bytes, signature, members, int(now.timestamp()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sha256 = archive.digest(out)[0]
    store.append_audit(AuditEvent(action="backup.created", actor=actor, at=clock.now(), details={
        "audit_head": manifest["audit_head"], "sha256": sha256, "database": kind,
        "certificates": contents.certificates}))
    return Backup(out, sha256, manifest)


def settings_summary(settings: Settings) -> dict:
    """The settings in effect, without secrets (a password in a URL shows as ***)."""
    summary = {"database_url": _masked(settings.database_url), "hsm_module": settings.hsm_module,
               "hsm_token": settings.hsm_token, "public_url": _masked(settings.public_url),
               "policy_dir": str(settings.policy_dir), "lint": settings.lint}
    if settings.keycloak is not None:
        k = settings.keycloak
        summary.update({"keycloak_url": _masked(k.url), "keycloak_admin_realm": k.admin_realm,
                        "keycloak_client_id": k.client_id, "keycloak_username": k.username or "",
                        "keycloak_ca_file": str(k.ca_file or ""), "keycloak_concurrency": k.concurrency,
                        "keycloak_timeout": k.timeout})
    return summary


def settings_toml(path: Path) -> tuple[bytes | None, list[str]]:
    """``device-ca.toml`` as archived: as it is, or, if a value is a URL with a password, rewritten
    without those settings (their names are returned)."""
    if not path.is_file():
        return None, []
    raw = path.read_bytes()
    try:
        values = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DeviceCAError(Kind.MALFORMED, f"{path}: {exc}") from None
    dropped = sorted(k for k, v in values.items() if isinstance(v, str) and _has_password(v))
    if not dropped:
        return raw, []
    kept = [f"{k} = {json.dumps(v)}" for k, v in values.items()
            if k not in dropped]
    note = f"# written by device-ca backup without {', '.join(dropped)} (a password): set it again on restore\n"
    return (note + "\n".join(kept) + "\n").encode(), dropped


def _has_password(value: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(value)
        return bool(parts.password) or "password=" in parts.query
    except ValueError:
        return False


def _masked(url: str) -> str:
    if not _has_password(url):
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = "&".join("password=***" if q.startswith("password=") else q for q in parts.query.split("&")) \
        if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _policy_members(policy_dir: Path) -> tuple[dict[str, bytes], list[str]]:
    """Every regular file under the policy directory (policies and the manufacturer CA files they
    name), and the manufacturer CA files that lie outside it (not archived)."""
    from device_ca.policy import Policies

    members: dict[str, bytes] = {}
    if not policy_dir.is_dir():
        raise DeviceCAError(Kind.NOT_FOUND, f"policy directory {policy_dir} does not exist")
    for root, dirs, names in os.walk(policy_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if name.startswith(".") or not path.is_file():
                continue
            members[f"policies/{path.relative_to(policy_dir).as_posix()}"] = path.read_bytes()
    base = policy_dir.resolve()
    outside = sorted({str(p) for policy in Policies.load(policy_dir) for p in policy.manufacturer_cas
                      if base not in Path(p).resolve().parents})
    return members, outside


def _not_archived(dropped: list[str], outside: list[str]) -> list[str]:
    notes = ["HSM keys (they stay on the token; back it up as docs/backup.md says for its type)",
             "HSM PIN, SO PIN and PIN files; Keycloak and other secrets (from the environment)",
             "tls/server.key and tls/server.pem (serve issues a new server certificate)"]
    if dropped:
        notes.append(f"device-ca.toml settings holding a password: {', '.join(dropped)}")
    notes += [f"manufacturer CA file outside the policy directory: {p}" for p in outside]
    return notes


def parse_head(text: str) -> tuple[int, str]:
    seq, _, digest = str(text).partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise archive.damaged("the manifest's audit head is not SEQ:HASH")
    return int(seq), digest


__all__ = ["Backup", "BackupSources", "make_backup", "parse_head", "settings_summary", "settings_toml"]
