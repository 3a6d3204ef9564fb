"""A running `device-ca serve` on free loopback ports, with its own token, database and policies."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from integration.cli_harness import ROOT, CaEnv
from integration.tls_tools import children


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    env: CaEnv
    port: int
    http_port: int
    process: subprocess.Popen
    log: Path

    @property
    def est(self) -> str:
        return f"https://127.0.0.1:{self.port}/.well-known/est"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def chain(self) -> Path:
        return self.env.ca_dir / "chain.pem"

    def curl(self, path: str, *args: str, body: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
        """curl against the EST base URL; returns (status, body, headers). Status 0: no HTTP answer."""
        out = self.env.home / f"curl-{time.monotonic_ns()}"
        cmd = ["curl", "-s", "-o", str(out), "-D", str(out) + ".h", "-w", "%{http_code}", "--cacert", str(self.chain),
               "--max-time", "60", *args, f"{self.est}{path}"]
        if body is not None:
            cmd[1:1] = ["--data-binary", "@-"]
        proc = subprocess.run(cmd, input=body, capture_output=True, timeout=90)
        status = int(proc.stdout or b"0")
        data = out.read_bytes() if out.exists() else b""
        headers = {}
        if Path(str(out) + ".h").exists():
            for line in Path(str(out) + ".h").read_text(errors="replace").splitlines()[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
        return status, data, headers

    def stop(self) -> None:
        """SIGTERM; if serve has not exited 20 s later, SIGKILL to its whole process group (its workers
        too). Stopping a stopped server does nothing."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)     # started with start_new_session: pgid == pid
                self.process.wait()

    def kill(self) -> None:
        """Abrupt death, as of a crashed machine: SIGKILL to serve's process group (the HTTPS listener
        and its workers) and to the HTTP listener's own group, with no chance to clean up."""
        groups = {self.process.pid} | {os.getpgid(pid) for pid in _descendants(self.process.pid)
                                       if _exists(pid)}
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 10     # until the last process holding a listening socket is gone
        while any(_accepts(port) for port in (self.port, self.http_port)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"a killed node still accepts connections on {self.port} or {self.http_port}")
            time.sleep(0.02)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until both listeners answer; stopped again if it does not get there."""
        try:
            _wait_ready(self, timeout)
        except BaseException:
            self.stop()
            raise


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _exists(pid: int) -> bool:
    try:
        os.getpgid(pid)
        return True
    except ProcessLookupError:
        return False


def _descendants(root: int) -> list[int]:
    """Every living process below ``root``."""
    found, todo = [], [root]
    while todo:
        below = children(todo.pop())
        found += below
        todo += below
    return found


def start_server(env: CaEnv, *extra: str, policy_dir: Path | None = None, timeout: float = 60) -> Server:
    """`device-ca serve` once it answers on both listeners; stopped again if it does not get there."""
    server = launch_server(env, *extra, policy_dir=policy_dir)
    server.wait_ready(timeout)
    return server


def launch_server(env: CaEnv, *extra: str, policy_dir: Path | None = None) -> Server:
    """`device-ca serve` started on free ports, not waited for (several nodes start at one instant);
    ``server.wait_ready()`` waits."""
    port, http_port = free_port(), free_port()
    if policy_dir is not None:
        env.extra["DEVICE_CA_POLICY_DIR"] = str(policy_dir)
    log = env.home / f"serve-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "device_ca.cli.main", "serve", "--port", str(port), "--http-port", str(http_port),
         *extra], env=env.env, cwd=env.home, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    return Server(env=env, port=port, http_port=http_port, process=process, log=log)


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context(cafile=str(server.chain))
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"device-ca serve exited {server.process.returncode}: {server.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.http}/healthz", timeout=2) as r1, \
                    urllib.request.urlopen(f"{server.est}/cacerts", timeout=2, context=context) as r2:
                if r1.status == 200 and r2.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"device-ca serve did not become ready: {server.log.read_text()[-2000:]}")


def policy_dir_with(tmp: Path, extra: dict[str, str]) -> Path:
    """The shipped policies plus test policies (name -> TOML text)."""
    directory = tmp / "policies"
    shutil.copytree(ROOT / "policies", directory)
    for name, text in extra.items():
        (directory / f"{name}.toml").write_text(text)
    return directory
