"""Throw-away PostgreSQL databases for tests, on the server at DEVICE_CA_TEST_PG_URL
(default: the local socket, as the current user; scripts/pg-start.sh sets that up)."""
from __future__ import annotations

import contextlib
import os
import secrets

import sqlalchemy as sa

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
