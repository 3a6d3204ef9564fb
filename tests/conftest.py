"""Shared fixtures.

The database under test is SQLite unless DEVICE_CA_TEST_DATABASE=postgresql, in which case
each test gets a fresh PostgreSQL database created on the server at DEVICE_CA_TEST_PG_URL
(default: the local socket, as the current user). scripts/test.sh runs the suite both ways.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg import BACKEND, fresh_database  # noqa: E402


def pytest_configure(config):
    """One SoftHSM token directory for the whole run, fixed before anything loads PKCS#11."""
    if not os.environ.get("DEVICE_CA_TEST_SOFTHSM_DIR"):
        import tempfile

        os.environ["DEVICE_CA_TEST_SOFTHSM_DIR"] = tempfile.mkdtemp(prefix="device-ca-softhsm-")
        config._device_ca_softhsm_tmp = os.environ["DEVICE_CA_TEST_SOFTHSM_DIR"]
    from hsm.softhsm import write_config

    os.environ["SOFTHSM2_CONF"] = str(write_config(Path(os.environ["DEVICE_CA_TEST_SOFTHSM_DIR"])))


def pytest_unconfigure(config):
    directory = getattr(config, "_device_ca_softhsm_tmp", None)
    if directory:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Tests that use a database carry the 'database' mark: the PostgreSQL run selects them."""
    for item in items:
        if {"database_url", "module_database_url"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.database)


def pytest_report_header(config):
    return f"device-ca test database: {BACKEND}; SoftHSM: {os.environ.get('SOFTHSM2_CONF')}"


@pytest.fixture
def database_url(tmp_path):
    with fresh_database(tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def module_database_url(tmp_path_factory):
    with fresh_database(tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def store(database_url):
    from device_ca.store import Store

    s = Store(database_url)
    yield s
    s.db.dispose()


@pytest.fixture
def clock():
    from helpers import T0
    from device_ca.ca.clock import FixedClock

    return FixedClock(T0)


@pytest.fixture(scope="session")
def policies():
    from device_ca.policy import Policies

    return Policies.load(ROOT / "policies")
