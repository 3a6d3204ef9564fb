"""Several `device-ca serve` nodes as an operator runs them: a state directory each, one database
(PostgreSQL), one token (SoftHSM tokens are global on this machine, chosen by label). The first
node's home is where `device-ca init` ran; the others were never initialised and only `serve`.

    nodes = start_nodes(serve, node_envs(tmp_path, database_url, 3), "--load-balancer", "127.0.0.1")
    nodes[1].kill()            # SIGKILL, as a crashed machine
    ...                        # the `serve` fixture stops whatever is still running
    with nginx_front(tmp_path, envs[0], nodes, est_port, status_port) as front:
        ...                    # deploy/nginx as shipped, with healthcheck.py, in front of the nodes

What a second node needs from the first node's home: nothing. Its server certificate, client-CA
bundle, CRL file and run directory are made by its own `serve` from the database and the token;
`ca/chain.pem` (what clients verify the HTTPS listeners with) is written here from
`device-ca ca chain`, as an operator would, and is not read by `serve`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from integration.cli_harness import ROOT, CaEnv, make_tokens, new_ca_env, openssl
from integration.server_harness import Server
from integration.tls_tools import NginxMain, estclient, stop_process

DEPLOY = ROOT / "deploy" / "nginx"

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


def render(**values: str) -> str:
    """deploy/nginx/device-ca.conf with every @NAME@ replaced (README.md: the same with sed)."""
    text = (DEPLOY / "device-ca.conf").read_text()
    for name, value in values.items():
        assert f"@{name}@" in text, name
        text = text.replace(f"@{name}@", value)
    left = re.findall(r"@[A-Z_]+@", text)
    assert not left, f"placeholders not rendered: {left}"
    return text


@dataclass
class Front:
    env: CaEnv                    # the first node's (where init ran)
    nodes: list[Server]
    nginx: NginxMain
    est_port: int
    status_port: int
    run_dir: Path
    checker: subprocess.Popen
    checker_log: Path

    @property
    def chain(self) -> Path:
        return self.env.ca_dir / "chain.pem"

    @property
    def status(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    def enroll(self, tmp: Path, device: str) -> subprocess.CompletedProcess:
        """estclient enrolls ``device`` (badge-reader, bootstrap token) through nginx."""
        (secret,) = make_tokens(self.env, "badge-reader", [device]).values()
        config = tmp / f"{device}-est.json"
        config.write_text(json.dumps({"username": device, "password": secret}))
        config.chmod(0o600)
        key = tmp / f"{device}.key"
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
        return estclient("enroll", "-server", f"127.0.0.1:{self.est_port}", "-explicit", self.chain,
                         "-aps", "badge-reader", "-config", config, "-key", key, "-cn", device,
                         "-ou", "badge-reader", "-org", "BuildingCo", "-out", tmp / f"{device}.pem")

    def ocsp(self, cert: Path) -> subprocess.CompletedProcess:
        """openssl ocsp (POST, with a nonce) through nginx, the answer verified against the root."""
        return openssl("ocsp", "-issuer", str(self.env.ca_dir / "issuing.pem"), "-cert", str(cert),
                       "-url", f"{self.status}/ocsp", "-CAfile", str(self.env.ca_dir / "root.pem"), "-timeout", "10")

    def lines(self, kind: str) -> str:
        return (self.run_dir / f"upstream-{kind}.conf").read_text()


@contextlib.contextmanager
def nginx_front(tmp: Path, env: CaEnv, nodes: list[Server], est_port: int, status_port: int,
                interval: float = 0.5, fall: int = 2, timeout: float = 1.0) -> Iterator[Front]:
    """deploy/nginx/device-ca.conf rendered for ``nodes`` and run, with healthcheck.py run as its
    README says (--once before nginx starts, then its loop); both stopped when the block ends."""
    run_dir = tmp / "nginx"
    checker = [sys.executable, str(DEPLOY / "healthcheck.py"), "--run-dir", str(run_dir),
               "--cafile", str(env.ca_dir / "chain.pem"), "--interval", str(interval), "--fall", str(fall),
               "--timeout", str(timeout), *[a for n in nodes for a in ("--node", f"127.0.0.1:{n.port}:{n.http_port}")]]
    subprocess.run([*checker, "--once"], check=True, timeout=30, capture_output=True)
    config = render(EST_LISTEN=f"127.0.0.1:{est_port}", STATUS_LISTEN=f"127.0.0.1:{status_port}",
                    RUN_DIR=str(run_dir), LOG_DIR=str(run_dir))
    with NginxMain(config, run_dir) as nginx:
        checker_log = run_dir / "healthcheck.log"
        with checker_log.open("wb") as log:
            process = subprocess.Popen(checker, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield Front(env, nodes, nginx, est_port, status_port, run_dir, process, checker_log)
        finally:
            stop_process(process, signal.SIGTERM, 5)
