"""Several `device-ca serve` nodes as an operator runs them: a state directory each, one database
(PostgreSQL), one token (SoftHSM tokens are global on this machine, chosen by label). The first
node's home is where `device-ca init` ran; the others were never initialised and only `serve`.

    nodes = start_nodes(serve, tmp_path, database_url, 3, "--rate-limit", "0")
    nodes[1].kill()            # SIGKILL, as a crashed machine
    ...                        # the `serve` fixture stops whatever is still running

What a second node needs from the first node's home: nothing. Its server certificate, client-CA
bundle, CRL file and run directory are made by its own `serve` from the database and the token;
`ca/chain.pem` (what clients verify the HTTPS listeners with) is written here from
`device-ca ca chain`, as an operator would, and is not read by `serve`.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from integration.cli_harness import CaEnv, new_ca_env
from integration.server_harness import Server

if TYPE_CHECKING:
    from integration.conftest import Servers


def node_envs(tmp_path: Path, database_url: str, count: int, organization: str = "BuildingCo",
              **extra_env: str) -> list[CaEnv]:
    """``count`` environments sharing a token and ``database_url``, homes ``tmp_path/node-<i>``; the
    CA is created through the first (``extra_env``, e.g. DEVICE_CA_PUBLIC_URL, is set on every one)."""
    first = new_ca_env(tmp_path, database_url, home_name="node-0")
    first.extra.update(extra_env)
    first.run("init", "--organization", organization)
    envs = [first]
    for i in range(1, count):
        home = tmp_path / f"node-{i}"
        home.mkdir(mode=0o700)
        env = dataclasses.replace(first, home=home, extra=dict(extra_env))
        chain = env.run("ca", "chain").stdout
        env.ca_dir.mkdir(mode=0o700)
        (env.ca_dir / "chain.pem").write_bytes(chain)
        envs.append(env)
    return envs


def start_nodes(servers: Servers, envs: list[CaEnv], *serve_args: str, timeout: float = 120) -> list[Server]:
    """A `serve` per environment, all launched back to back (the same instant, to within the fork
    of a process), then waited for together; ``servers`` (the `serve` fixture) stops them all."""
    launched = [servers.launch(env, *serve_args) for env in envs]
    deadline = time.monotonic() + timeout
    for server in launched:
        server.wait_ready(max(1.0, deadline - time.monotonic()))
    return launched
