"""`device-ca serve` fixtures: every server a test or fixture starts is stopped when its scope ends,
also when the test fails or a fixture's setup raises after the server started."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.cli_harness import CaEnv
from integration.server_harness import Server, launch_server, start_server
from pg import postgres_database


class Servers:
    """Starts servers and remembers them, so that one finalizer can stop them all."""

    def __init__(self) -> None:
        self.started: list[Server] = []

    def __call__(self, env: CaEnv, *serve_args: str, policy_dir: Path | None = None) -> Server:
        server = start_server(env, *serve_args, policy_dir=policy_dir)
        self.started.append(server)
        return server

    def launch(self, env: CaEnv, *serve_args: str, policy_dir: Path | None = None) -> Server:
        """Started but not waited for (``server.wait_ready()``): several nodes at one instant."""
        server = launch_server(env, *serve_args, policy_dir=policy_dir)
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        """Newest first; one that fails to stop does not leave the others running."""
        with contextlib.ExitStack() as stack:
            for server in self.started:
                stack.callback(server.stop)
            self.started.clear()


@pytest.fixture
def serve() -> Iterator[Servers]:
    """`serve(env, *serve_args, policy_dir=None) -> Server`; stopped after the test."""
    servers = Servers()
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture(scope="module")
def module_serve() -> Iterator[Servers]:
    """`serve(env, *serve_args, policy_dir=None) -> Server` for module-scoped fixtures; stopped after the module."""
    servers = Servers()
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL database whatever the suite's backend: what several nodes share.
    Request it before `serve`, so that the nodes stop before it is dropped."""
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def module_postgres_url() -> Iterator[str]:
    """`postgres_url` for module-scoped fixtures; request it before `module_serve`."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def pg_cluster():
    """A PostgreSQL primary with a synchronous streaming standby (tests/pgcluster.py): `url` names
    both, `kill_primary()`, `promote()`; both servers stopped and removed after the test."""
    from pgcluster import pg_cluster as running_cluster

    with running_cluster() as cluster:
        yield cluster
