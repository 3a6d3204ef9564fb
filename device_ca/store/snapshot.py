"""Consistent database snapshots for backups, and their restore into an empty database.

SQLite: the online backup API (``sqlite3.Connection.backup``, one step) copies the database as of
one read transaction while the server goes on writing (WAL). PostgreSQL: ``pg_dump`` in custom
format on a snapshot exported by a REPEATABLE READ transaction, in which the audit head and the CA
records are read too: what the manifest says is what the dump holds. ``pg_restore`` loads it into
an empty database only.

The URL's password never reaches a command line, an environment variable or the archive: libpq
reads it from a 0600 passfile in a private temporary directory, removed when the tool exits.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

from device_ca.errors import DeviceCAError, Kind
from device_ca.store.audit import GENESIS
from device_ca.store.db import PG_CONNECT_TIMEOUT, make_engine
from device_ca.store.tables import AuditHeadRow, CaCertificateRow, CertificateRow, OcspResponderRow

SQLITE, POSTGRESQL = "sqlite", "postgresql"
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
_TOOL_TIMEOUT = 3600


@dataclass(frozen=True)
class SnapshotContents:
    """What a snapshot holds that a backup's manifest records, read inside the snapshot."""

    head: tuple[int, str]
    ca: dict[str, tuple[str, bytes]]          # name -> (key label, DER)
    responder_labels: tuple[str, ...]
    certificates: int
    revision: str | None                       # the Alembic revision of the schema


def kind_of(url: str) -> str:
    if url.startswith("sqlite"):
        return SQLITE
    if url.startswith("postgresql"):
        return POSTGRESQL
    raise DeviceCAError(Kind.MALFORMED, "backup and restore know SQLite and PostgreSQL database URLs only")


def dump(url: str, directory: Path) -> tuple[Path, SnapshotContents]:
    """A snapshot of the database at ``url`` as one file in ``directory``, and what it holds."""
    if kind_of(url) == SQLITE:
        return _dump_sqlite(url, directory)
    return _dump_postgresql(url, directory)


def ensure_empty(url: str) -> None:
    """CONFLICT unless the database at ``url`` holds no tables (a restore never overwrites data)."""
    if kind_of(url) == SQLITE:
        path = sqlite_path(url)
        side = [f"{path}{s}" for s in _SQLITE_SIDE_FILES if _size(Path(f"{path}{s}"))]
        if side:
            raise DeviceCAError(Kind.CONFLICT, f"{side[0]} exists: the database is in use or not empty; "
                                "restore needs an empty database")
        if not _size(path):
            return
        with contextlib.closing(sqlite3.connect(path)) as db:
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise DeviceCAError(Kind.CONFLICT, f"database {path} is not empty; restore needs an empty database")
        return
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            relations = c.execute(sa.text(
                "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
                " AND n.nspname NOT LIKE 'pg_temp%'")).scalar()
            name = c.exec_driver_sql("SELECT current_database()").scalar()
    except sa.exc.DBAPIError as exc:
        raise DeviceCAError(Kind.DB_UNAVAILABLE, "database unavailable", cause=exc) from None
    finally:
        engine.dispose()
    if relations:
        raise DeviceCAError(Kind.CONFLICT, f"database {name!r} is not empty ({relations} relations); restore needs an "
                            "empty database (create it anew)")


def load(url: str, snapshot: Path) -> None:
    """Restore ``snapshot`` (made by ``dump`` for the same kind of database) into the empty database at
    ``url``; the caller has checked with ``ensure_empty``."""
    if kind_of(url) == SQLITE:
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.restore-{os.getpid()}"
        try:
            shutil.copyfile(snapshot, tmp)
            os.chmod(tmp, 0o600)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    with _libpq_env(url) as (conninfo, env):
        major = _server_major(url)
        _run([_tool("pg_restore", major), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
              f"--dbname={conninfo}", str(snapshot)], env, "pg_restore")


# -- SQLite -------------------------------------------------------------------------------------

def sqlite_path(url: str) -> Path:
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:":
        raise DeviceCAError(Kind.MALFORMED, "an in-memory SQLite database has nothing to back up or restore into")
    return Path(database).absolute()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _dump_sqlite(url: str, directory: Path) -> tuple[Path, SnapshotContents]:
    source = sqlite_path(url)
    if not source.is_file():
        raise DeviceCAError(Kind.NOT_FOUND, f"no database at {source}")
    out = directory / "device-ca.sqlite"
    with contextlib.closing(sqlite3.connect(source, timeout=30)) as src, \
            contextlib.closing(sqlite3.connect(out)) as dst:
        src.backup(dst)                          # pages=-1: one step, one read transaction
        dst.execute("PRAGMA journal_mode=DELETE")   # one self-contained file; serve turns WAL on again
    engine = sa.create_engine(f"sqlite:///{out}")
    try:
        with engine.connect() as c:
            return out, _contents(c)
    finally:
        engine.dispose()


# -- PostgreSQL ---------------------------------------------------------------------------------

def _dump_postgresql(url: str, directory: Path) -> tuple[Path, SnapshotContents]:
    out = directory / "device-ca.pgdump"
    engine = make_engine(url)
    try:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as c, c.begin():
            snapshot_id = c.exec_driver_sql("SELECT pg_export_snapshot()").scalar()
            contents = _contents(c)
            major = int(c.exec_driver_sql("SHOW server_version_num").scalar()) // 10000
            with _libpq_env(url) as (conninfo, env):        # the exporting transaction stays open meanwhile
                _run([_tool("pg_dump", major), "--format=custom", "--no-owner", "--no-privileges",
                      f"--snapshot={snapshot_id}", f"--file={out}", f"--dbname={conninfo}"], env, "pg_dump")
    except sa.exc.DBAPIError as exc:
        raise DeviceCAError(Kind.DB_UNAVAILABLE, "database unavailable", cause=exc) from None
    finally:
        engine.dispose()
    return out, contents


def _server_major(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            return int(c.exec_driver_sql("SHOW server_version_num").scalar()) // 10000
    except sa.exc.DBAPIError as exc:
        raise DeviceCAError(Kind.DB_UNAVAILABLE, "database unavailable", cause=exc) from None
    finally:
        engine.dispose()


def _tool(name: str, server_major: int) -> str:
    """``name`` of the server's major version (Debian keeps each under /usr/lib/postgresql/N/bin),
    else the one on PATH if it is at least as new as the server."""
    for candidate in (f"/usr/lib/postgresql/{server_major}/bin/{name}", shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            version = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=30).stdout
            found = re.search(r"\b(\d+)(?:\.\d+)*", version)
            if found and int(found.group(1)) >= server_major:
                return candidate
    raise DeviceCAError(Kind.NOT_FOUND, f"no {name} of PostgreSQL {server_major} or newer: install the client "
                        f"tools of the server's version (Debian: postgresql-client-{server_major})")


def libpq_parameters(url: str) -> tuple[dict[str, str], str | None]:
    """The URL as libpq connection parameters without the password, and the password."""
    u = sa.engine.make_url(url)
    params: dict[str, str] = {}
    for key, value in (("dbname", u.database), ("user", u.username), ("host", u.host), ("port", u.port)):
        if value:
            params[key] = str(value)
    password = u.password
    for key, value in u.query.items():
        value = ",".join(value) if isinstance(value, tuple) else str(value)
        if key == "password":
            password = value
        else:
            params[key] = value
    params.setdefault("connect_timeout", str(PG_CONNECT_TIMEOUT))
    return params, (str(password) if password else None)


@contextlib.contextmanager
def _libpq_env(url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(conninfo without the password, the child's environment with PGPASSFILE when there is one)."""
    from psycopg.conninfo import make_conninfo

    params, password = libpq_parameters(url)
    env = {k: v for k, v in os.environ.items() if k != "PGPASSFILE"}
    if password is None:
        yield make_conninfo(**params), env
        return
    directory = tempfile.mkdtemp(prefix="device-ca-pgpass-")          # 0700
    passfile = Path(directory) / "pgpass"
    try:
        escaped = password.replace("\\", "\\\\").replace(":", "\\:")
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"*:*:*:*:{escaped}\n")
        env["PGPASSFILE"] = str(passfile)
        env.pop("PGPASSWORD", None)
        yield make_conninfo(**params), env
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=_TOOL_TIMEOUT)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise DeviceCAError(Kind.DB_UNAVAILABLE, f"{what} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")


# -- inside the snapshot ------------------------------------------------------------------------

_HEAD, _CA = AuditHeadRow.__table__, CaCertificateRow.__table__
_CERTS, _RESPONDERS = CertificateRow.__table__, OcspResponderRow.__table__


def _contents(c: sa.Connection) -> SnapshotContents:
    head = c.execute(sa.select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1)).first()
    ca = {r.name: (r.key_label, bytes(r.der)) for r in c.execute(sa.select(_CA.c.name, _CA.c.key_label, _CA.c.der))}
    responders = tuple(sorted({r[0] for r in c.execute(sa.select(_RESPONDERS.c.key_label))}))
    count = c.execute(sa.select(sa.func.count()).select_from(_CERTS)).scalar()
    revision = c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return SnapshotContents(head=(head[0], head[1]) if head else (0, GENESIS), ca=ca, responder_labels=responders,
                            certificates=int(count), revision=revision)
