"""Engines and transactions for SQLite and PostgreSQL.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
``BEGIN IMMEDIATE``: a deferred transaction that upgrades from read to write fails with
SQLITE_BUSY_SNAPSHOT without waiting (research F11). PostgreSQL goes through psycopg 3.
"""
from __future__ import annotations

import collections
import contextlib
import datetime as dt
import fcntl
import mmap
import operator
import os
import struct
import threading
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session

from device_ca import metrics
from device_ca.errors import DeviceCAError, Kind

MIGRATIONS = Path(__file__).parent / "migrations"
# Seconds a new PostgreSQL connection may take per host (libpq's connect_timeout; the URL may set
# its own). Without it a host that accepts TCP but never answers, such as a frozen primary, holds
# the request forever instead of letting libpq try the next host of a multi-host URL.
PG_CONNECT_TIMEOUT = 5


def make_engine(url: str) -> sa.Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None     # SQLAlchemy's begin event issues BEGIN itself
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection) -> None:
            mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
            connection.exec_driver_sql(f"BEGIN {mode}")

        return engine
    connect_args = {} if "connect_timeout" in sa.engine.make_url(url).query else {"connect_timeout": PG_CONNECT_TIMEOUT}
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args=connect_args)


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def after_key(time_column, id_column, after: tuple[dt.datetime, str] | None):
    """The condition of keyset paging on (time, id): rows strictly after ``after`` in that order
    (True when there is no ``after``)."""
    if after is None:
        return sa.true()
    at, key = after
    return sa.or_(time_column > at, sa.and_(time_column == at, id_column > key))


def unavailable(exc: Exception) -> DeviceCAError:
    """The database's failure as the domain's error kind, counted in device_ca_database_errors_total."""
    metrics.database_error()
    return DeviceCAError(Kind.DB_UNAVAILABLE, "database unavailable", cause=exc)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Database outages become DB_UNAVAILABLE; integrity errors pass through for the caller."""
    try:
        yield
    except IntegrityError:
        raise
    except DBAPIError as exc:
        raise unavailable(exc) from None


class _WriterQueue:
    """A process-and-thread-wide writer lock for one SQLite file (flock on ``<db>.writelock``).

    The lock file also holds a change counter (8 bytes, memory-mapped; see ``ChangeCounter``): a
    writer makes it odd and new when it takes the lock and even and new again just before it lets
    go, after its COMMIT. A crash in between leaves it odd, which readers take as "changing"."""

    def __init__(self, url: str):
        self._mutex = threading.Lock()
        path = sa.engine.make_url(url).database
        self._path = f"{path}.writelock" if path and path != ":memory:" else None
        self._fd: int | None = None
        self._counter: mmap.mmap | None = None
        self._pid = -1

    def __enter__(self) -> None:
        self._mutex.acquire()
        if self._path is None:
            return
        try:
            if self._pid != os.getpid():          # a forked child needs its own open file description
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                self._counter = _map_counter(self._fd, writable=True)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError:
            self._mutex.release()
            raise
        value = _COUNTER.unpack_from(self._counter)[0]
        _COUNTER.pack_into(self._counter, 0, value + 1 if value % 2 == 0 else value + 2)

    def __exit__(self, *exc) -> None:
        try:
            if self._path is not None and self._fd is not None:
                _COUNTER.pack_into(self._counter, 0, _COUNTER.unpack_from(self._counter)[0] + 1)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()


_COUNTER = struct.Struct("=Q")


def _map_counter(fd: int, writable: bool) -> mmap.mmap:
    if os.fstat(fd).st_size < _COUNTER.size:
        os.ftruncate(fd, _COUNTER.size)        # only ever grows the file: a concurrent creator is harmless
    return mmap.mmap(fd, _COUNTER.size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)


class ChangeCounter:
    """Has anything been written to this SQLite database since I last looked? (a read of shared
    memory, ~0.3 µs, instead of a query). Every write made through ``Database`` moves the counter;
    an odd value means a write is under way (or its writer died). Writes made outside device-ca
    (the sqlite3 shell) do not move it."""

    def __init__(self, url: str):
        path = sa.engine.make_url(url).database
        self._path = f"{path}.writelock"
        self._map: mmap.mmap | None = None
        self._pid = -1

    def value(self) -> int:
        if self._pid != os.getpid():
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                self._map = _map_counter(fd, writable=False)
            finally:
                os.close(fd)
            self._pid = os.getpid()
        return _COUNTER.unpack_from(self._map)[0]


class Direct:
    """A transaction on the DBAPI connection itself, for the hot paths' prebuilt statements.

    SQLAlchemy spends 50-100 µs per execution on events, parameter and result objects, and about
    as much per transaction; issuing one certificate runs a dozen statements. Here each Core
    statement is compiled once per dialect and parameter set, its parameters pass through the
    same bind processors SQLAlchemy applies (SQLite's datetime strings, ...), result rows through
    the columns' result processors, and DBAPI errors become SQLAlchemy's exception classes, so
    callers and the rows stored are the same as through a Core connection. Only statements built
    once at import time belong here: the compiled forms are cached per statement object."""

    def __init__(self, raw, dialect):
        self._raw = raw
        self._cursor = raw.cursor()
        self.dialect = dialect

    def execute(self, statement, params: dict | list[dict] | None = None) -> "DirectResult":
        many = isinstance(params, list)
        rows = params if many else [params or {}]
        sql, order, binds, results = _compiled(statement, self.dialect, tuple(rows[0]))
        fixed, processors = binds
        prepared = []
        for row in rows:
            values = {**fixed, **row} if fixed else dict(row)
            for name, process in processors:
                values[name] = process(values[name])
            prepared.append(order(values) if order is not None else values)
        try:
            if many and len(prepared) > 1:              # one row: execute is cheaper than executemany
                self._cursor.executemany(sql, prepared)
            else:
                self._cursor.execute(sql, prepared[0])
        except self.dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DBAPIError.instance(sql, prepared, exc, self.dialect.loaded_dbapi.Error) from exc
        fetched = None
        if results is not None:
            row_type, processors = results
            fetched = [row_type(*(p(v) if p else v for p, v in zip(processors, row)))
                       for row in self._cursor.fetchall()]
        return DirectResult(self._cursor.rowcount, fetched)


def _dbapi(call, dialect) -> None:
    try:
        call()
    except dialect.loaded_dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error) from exc


def _discard_transaction(raw) -> None:
    """Roll back; a connection that cannot even do that is dropped from the pool."""
    try:
        raw.rollback()
    except Exception:  # noqa: BLE001 - the caller's own error (if any) is the one to report
        raw.invalidate()


class DirectResult:
    def __init__(self, rowcount: int, rows: list[tuple] | None):
        self.rowcount = rowcount
        self._rows = rows or []

    def first(self):
        return self._rows[0] if self._rows else None

    def all(self) -> list:
        return list(self._rows)


_COMPILED: dict[tuple, tuple] = {}
_BEGIN_IMMEDIATE = sa.text("BEGIN IMMEDIATE")


def _compiled(statement, dialect, keys: tuple) -> tuple:
    """(SQL text, positional parameter order or None, (fixed values, bind processors), result
    processors or None) for ``statement`` on ``dialect`` with parameters named ``keys``; the
    statement itself is kept in the cache entry, so its id is never reused by another."""
    key = (id(statement), dialect.name, keys)
    hit = _COMPILED.get(key)
    if hit is not None:
        return hit[1]
    insert = getattr(statement, "is_insert", False)
    compiled = statement.compile(dialect=dialect, column_keys=list(keys) if insert else None)
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise TypeError("Direct.execute takes statements without expanding parameters")
    fixed = {name: bind.value for name, bind in compiled.binds.items() if name not in keys and not bind.required}
    processors = tuple((name, process) for name, bind in compiled.binds.items()
                       if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None)
    order = _picker(list(compiled.positiontup)) if compiled.positional else None
    results = None
    if getattr(statement, "is_select", False):
        columns = list(statement.selected_columns)
        results = (collections.namedtuple("Row", [c.key for c in columns], rename=True),
                   tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns))
    entry = (str(compiled), order, (fixed, processors), results)
    _COMPILED[key] = (statement, entry)
    return entry


def _picker(names: list[str]):
    """A row's values as the statement's positional parameters, in its order (itemgetter: in C)."""
    if len(names) >= 2:
        return operator.itemgetter(*names)
    if names:
        name = names[0]
        return lambda values: (values[name],)
    return lambda values: ()


class Database:
    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self._writer = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        # SQLite has one writer at a time and its busy handler waits by sleeping (1 ms, 2 ms, ...
        # 100 ms): writers queue on a lock instead, threads on a mutex and processes on flock().
        self._write_lock = _WriterQueue(url) if url.startswith("sqlite") else contextlib.nullcontext()

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with translate_errors(), Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back on any error."""
        with self._write_lock, translate_errors(), Session(self._writer, expire_on_commit=False) as session:
            with session.begin():
                yield session

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """One write transaction on a Core connection (the hot paths; no ORM unit of work)."""
        with self._write_lock, translate_errors(), self._writer.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def direct(self) -> Iterator[Direct]:
        """One write transaction for prebuilt statements on the DBAPI connection (see ``Direct``):
        committed when the block ends, rolled back on any error."""
        with self._write_lock, translate_errors(), self._raw() as raw:
            tx = Direct(raw, self.engine.dialect)
            if self.engine.dialect.name == "sqlite":
                tx.execute(_BEGIN_IMMEDIATE)
            try:
                yield tx
            except BaseException:
                _discard_transaction(raw)
                raise
            _dbapi(raw.commit, self.engine.dialect)

    @contextlib.contextmanager
    def direct_read(self) -> Iterator[Direct]:
        with translate_errors(), self._raw() as raw:
            yield Direct(raw, self.engine.dialect)
            _discard_transaction(raw)

    @contextlib.contextmanager
    def _raw(self):
        """A pooled DBAPI connection, back to the pool (reset) when the block ends."""
        try:
            raw = self.engine.raw_connection()
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DBAPIError.instance(None, None, exc, self.engine.dialect.loaded_dbapi.Error) from exc
        try:
            yield raw
        finally:
            raw.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[sa.Connection]:
        with translate_errors(), self.engine.connect() as connection:
            yield connection

    def dispose(self) -> None:
        self.engine.dispose()
