"""Throw-away databases for tests: PostgreSQL ones on the server at DEVICE_CA_TEST_PG_URL
(default: the local socket, as the current user; scripts/pg-start.sh sets that up), and
``fresh_database`` of the backend under test (DEVICE_CA_TEST_DATABASE: sqlite or postgresql)."""
from __future__ import annotations

import contextlib
import os
import secrets

from pathlib import Path

import pytest
import sqlalchemy as sa

BACKEND = os.environ.get("DEVICE_CA_TEST_DATABASE", "sqlite")
PG_ADMIN_URL = os.environ.get("DEVICE_CA_TEST_PG_URL", "postgresql+psycopg:///postgres?host=/var/run/postgresql")


@contextlib.contextmanager
def postgres_database():
    name = f"devca_test_{secrets.token_hex(6)}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextlib.contextmanager
def fresh_database(directory: Path):
    """A URL of an empty database of the backend under test, dropped afterwards."""
    if BACKEND == "sqlite":
        yield f"sqlite:///{directory / 'device-ca.db'}"
        return
    if BACKEND != "postgresql":
        raise pytest.UsageError(f"DEVICE_CA_TEST_DATABASE must be sqlite or postgresql, not {BACKEND}")
    with postgres_database() as url:
        yield url
