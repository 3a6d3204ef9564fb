"""A real Keycloak 26.7.3 for the tests, started with scripts/keycloak.sh on free loopback ports.

Each test session runs its own instance (own state directory, database and ports), with the
session's device CA chain as the HTTPS trust store, and stops it at the end. A Keycloak that
cannot be installed or started is a test failure, never a skip.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from integration.cli_harness import ROOT
from integration.server_harness import free_port

SCRIPT = ROOT / "scripts" / "keycloak.sh"


@dataclass
class Keycloak:
    state: Path
    http_port: int
    https_port: int
    management_port: int
    username: str = "admin"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def server_cert(self) -> Path:
        return self.state / "tls" / "server.pem"

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KC_", "KEYCLOAK_"))}
        env.update({"KEYCLOAK_STATE": str(self.state), "KEYCLOAK_HTTP_PORT": str(self.http_port),
                    "KEYCLOAK_HTTPS_PORT": str(self.https_port),
                    "KEYCLOAK_MANAGEMENT_PORT": str(self.management_port),
                    "KC_BOOTSTRAP_ADMIN_USERNAME": self.username, "KC_BOOTSTRAP_ADMIN_PASSWORD": self.password})
        env.update(extra)
        return env

    def _run(self, command: str, timeout: float = 400, **extra: str) -> None:
        proc = subprocess.run([str(SCRIPT), command], env=self._env(**extra), capture_output=True, text=True,
                              timeout=timeout)
        assert self.password not in proc.stdout + proc.stderr, "keycloak.sh printed the admin password"
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/keycloak.sh {command} failed ({proc.returncode}): "
                               f"{proc.stdout[-1500:]}{proc.stderr[-1500:]}")

    def start(self, truststore: Path | None = None, fresh: bool = False) -> None:
        extra = {"KEYCLOAK_FRESH": "1" if fresh else "0"}
        if truststore is not None:
            extra["KEYCLOAK_TRUSTSTORE"] = str(truststore)
        self._run("start", **extra)

    def stop(self) -> None:
        self._run("stop", timeout=60)

    def running(self) -> bool:
        return subprocess.run([str(SCRIPT), "status"], env=self._env(), capture_output=True).returncode == 0

    def admin(self):
        from device_ca.keycloak import AdminClient, Credentials

        return AdminClient(self.url, Credentials(username=self.username, password=self.password))

    def device_env(self, home: Path) -> dict[str, str]:
        """device-ca settings for this Keycloak; the password goes into a 0600 file, not the environment."""
        secret = home / "keycloak-password"
        if not secret.exists():
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, self.password.encode() + b"\n")
            os.close(fd)
        return {"DEVICE_CA_KEYCLOAK_URL": self.url, "DEVICE_CA_KEYCLOAK_USERNAME": self.username,
                "DEVICE_CA_KEYCLOAK_PASSWORD_FILE": str(secret)}

    def token(self, realm: str, client_id: str, cert: Path, key: Path) -> tuple[int, dict]:
        """A device's client-credentials grant over mutual TLS to the HTTPS port, no secret (curl)."""
        proc = subprocess.run(
            ["curl", "-s", "-w", "\n%{http_code}", "--max-time", "30", "--cacert", str(self.server_cert),
             "--cert", str(cert), "--key", str(key), "-d", "grant_type=client_credentials", "-d",
             f"client_id={client_id}",
             f"https://127.0.0.1:{self.https_port}/realms/{realm}/protocol/openid-connect/token"],
            capture_output=True, text=True, timeout=60)
        body, _, status = proc.stdout.rpartition("\n")
        try:
            answer = json.loads(body) if body else {}
        except ValueError:
            answer = {"raw": body}
        return int(status or 0), answer


def new_keycloak(state: Path) -> Keycloak:
    return Keycloak(state=state, http_port=free_port(), https_port=free_port(), management_port=free_port())


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
