"""The backup archive: a gzip'd tar of named members, a manifest and the manifest's signature.

``manifest.json`` lists every other member with its SHA-256 and size, the database snapshot's
audit head ``SEQ:HASH``, the CA certificates with their key labels and the non-secret settings.
``manifest.sig`` is an ECDSA/SHA-256 signature over the manifest's exact bytes made with the
token's audit key (``device-ca-audit``, ra/checkpoints.py): whoever changes a member and the
manifest to match still cannot sign, and a restore checks the signature with the token it is
given. Reading takes regular files with plain relative names only, each once, and only those the
manifest lists.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from device_ca.errors import DeviceCAError, Kind

FORMAT = "device-ca-backup/1"
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
_MANIFEST_LIMIT = 4 << 20
_CHUNK = 1 << 20


def damaged(detail: str) -> DeviceCAError:
    return DeviceCAError(Kind.MALFORMED, f"backup archive refused: {detail}; nothing was restored")


def sign_manifest(manifest: dict, audit_key) -> tuple[bytes, bytes]:
    data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    return data, audit_key.sign(data, ec.ECDSA(hashes.SHA256()))


def write_archive(f: IO[bytes], manifest: bytes, signature: bytes, members: dict[str, Path | bytes],
                  mtime: int) -> None:
    """The archive into ``f``: manifest, signature, then the members in the manifest's order."""
    with tarfile.open(fileobj=f, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, content in [(MANIFEST, manifest), (SIGNATURE, signature), *members.items()]:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o600, mtime, 0, 0, "", ""
            if isinstance(content, bytes):
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.size = content.stat().st_size
                with open(content, "rb") as src:
                    tar.addfile(info, src)


def digest(content: Path | bytes) -> tuple[str, int]:
    """SHA-256 (hex) and size of a member."""
    if isinstance(content, bytes):
        return hashlib.sha256(content).hexdigest(), len(content)
    h, size = hashlib.sha256(), 0
    with open(content, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


@dataclass
class OpenedArchive:
    """An archive read into a private temporary directory, every member's hash checked against the
    manifest (the signature is checked by ``verify_signature`` once the token is at hand)."""

    manifest: dict
    manifest_bytes: bytes
    signature: bytes
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self.manifest["members"] if n.startswith(prefix))

    def verify_signature(self, audit_public_key) -> None:
        try:
            audit_public_key.verify(self.signature, self.manifest_bytes, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError, TypeError):
            raise damaged("the manifest's signature does not verify with the token's audit key (the manifest "
                          "was altered, or the archive belongs to another CA)") from None

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def open_archive(path: Path) -> OpenedArchive:
    """Read and check ``path``; MALFORMED for anything that is not an intact archive of this format."""
    directory = Path(tempfile.mkdtemp(prefix="device-ca-restore-"))     # 0700
    try:
        return _read(Path(path), directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _read(path: Path, directory: Path) -> OpenedArchive:
    try:
        tar = tarfile.open(path, mode="r:gz")
    except FileNotFoundError:
        raise DeviceCAError(Kind.NOT_FOUND, f"no backup archive at {path}") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise damaged(f"{path} is not a device-ca backup ({exc})") from None
    seen: dict[str, tuple[str, int]] = {}
    manifest_bytes = signature = None
    with tar:
        try:
            for info in tar:
                name = _member_name(info)
                if name in seen or (name == MANIFEST and manifest_bytes is not None) \
                        or (name == SIGNATURE and signature is not None):
                    raise damaged(f"member {name} appears twice")
                source = tar.extractfile(info)
                if name in (MANIFEST, SIGNATURE):
                    if info.size > _MANIFEST_LIMIT:
                        raise damaged(f"{name} is too large")
                    data = source.read()
                    manifest_bytes, signature = (data, signature) if name == MANIFEST else (manifest_bytes, data)
                    continue
                seen[name] = _copy(source, directory / name)
        except (tarfile.TarError, OSError, EOFError, UnicodeError) as exc:
            raise damaged(f"{path} cannot be read ({exc})") from None
    if manifest_bytes is None or signature is None:
        raise damaged(f"{path} has no {MANIFEST} or no {SIGNATURE}")
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError:
        raise damaged(f"{MANIFEST} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("members"), dict):
        raise damaged(f"not a {FORMAT} manifest")
    listed = manifest["members"]
    if set(listed) != set(seen):
        extra, missing = sorted(set(seen) - set(listed)), sorted(set(listed) - set(seen))
        raise damaged(f"members not listed in the manifest: {', '.join(extra) or '-'}; "
                      f"listed but missing: {', '.join(missing) or '-'}")
    for name, (sha256, size) in seen.items():
        entry = listed[name]
        if not isinstance(entry, dict) or entry.get("sha256") != sha256 or entry.get("size") != size:
            raise damaged(f"member {name} does not match its SHA-256 in the manifest (damaged or altered)")
    return OpenedArchive(manifest, manifest_bytes, signature, directory)


def _member_name(info: tarfile.TarInfo) -> str:
    if not info.isreg():
        raise damaged(f"member {info.name!r} is not a regular file")
    name = info.name
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name \
            or str(PurePosixPath(*parts)) != name or len(parts) > 8:
        raise damaged(f"member name {name!r} is not a plain relative path")
    return name


def _copy(source: IO[bytes], target: Path) -> tuple[str, int]:
    target.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return h.hexdigest(), size
