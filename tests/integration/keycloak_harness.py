"""A real Keycloak 26.7.3 for the tests, started with scripts/keycloak.sh on free loopback ports.

Each test session runs its own instance (own state directory, database and ports), with the
session's device CA chain as the HTTPS trust store, and stops it at the end. A Keycloak that
cannot be installed or started is a test failure, never a skip.
"""
from __future__ import annotations

import base64
import contextlib
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

    def start(self, truststore: Path | None = None, fresh: bool = False, ready_timeout: int | None = None) -> None:
        """Start and wait until ready; if that fails in any way (not ready in time, the script
        itself timing out), nothing is left running and the error carries the log's tail."""
        extra = {"KEYCLOAK_FRESH": "1" if fresh else "0"}
        if truststore is not None:
            extra["KEYCLOAK_TRUSTSTORE"] = str(truststore)
        if ready_timeout is not None:
            extra["KEYCLOAK_READY_TIMEOUT"] = str(ready_timeout)
        try:
            self._run("start", **extra)
        except BaseException as exc:
            self.stop()
            log = self.state / "keycloak.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else "(no log)"
            raise RuntimeError(f"Keycloak did not start: {exc}\n--- keycloak.log ---\n{tail}") from None

    def stop(self) -> None:
        """Stop it, whatever state it is in: the script first, then a kill of its process group."""
        import signal

        try:
            self._run("stop", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        pid_file = self.state / "keycloak.pid"
        if pid_file.exists():
            try:
                os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError, PermissionError):
                pass
            pid_file.unlink(missing_ok=True)

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
        return self.post_mtls(f"/realms/{realm}/protocol/openid-connect/token", cert, key,
                              grant_type="client_credentials", client_id=client_id)

    def post_mtls(self, path: str, cert: Path, key: Path, **form: str) -> tuple[int, dict]:
        """A form POST to the HTTPS port with the device's certificate (curl); (status, JSON answer)."""
        data = [arg for name, value in form.items() for arg in ("-d", f"{name}={value}")]
        proc = subprocess.run(
            ["curl", "-s", "-w", "\n%{http_code}", "--max-time", "30", "--cacert", str(self.server_cert),
             "--cert", str(cert), "--key", str(key), *data, f"https://127.0.0.1:{self.https_port}{path}"],
            capture_output=True, text=True, timeout=60)
        body, _, status = proc.stdout.rpartition("\n")
        try:
            answer = json.loads(body) if body else {}
        except ValueError:
            answer = {"raw": body}
        return int(status or 0), answer

    def add_user(self, realm: str, username: str, password: str) -> str:
        """A person in the realm (complete profile, permanent password, nothing left to do at login)."""
        admin = self.admin()
        _, _, headers = admin.request("POST", f"/admin/realms/{realm}/users", {
            "username": username, "enabled": True, "emailVerified": True, "email": f"{username}@example.com",
            "firstName": username.title(), "lastName": "Tester", "requiredActions": []}, expect=(201,))
        user_id = headers["location"].rstrip("/").rsplit("/", 1)[-1]
        admin.request("PUT", f"/admin/realms/{realm}/users/{user_id}/reset-password",
                      {"type": "password", "value": password, "temporary": False}, expect=(204,))
        return user_id

    def approve_device(self, verification_uri_complete: str, username: str, password: str) -> str:
        """What the person does on their phone for RFC 8628: open the verification URI, log in,
        grant access if asked; no browser, the forms are posted over HTTPS. Returns the last page."""
        import html
        import http.cookiejar
        import re
        import ssl
        import urllib.parse
        import urllib.request

        context = ssl.create_default_context(cafile=str(self.server_cert))
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                             urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

        where = [verification_uri_complete]

        def fetch(url: str, form: dict | None = None) -> str:
            data = urllib.parse.urlencode(form).encode() if form is not None else None
            with opener.open(urllib.request.Request(url, data), timeout=30) as r:
                where[0] = r.geturl()
                return r.read().decode("utf-8", "replace")

        def action(page: str) -> str:
            found = re.search(r'<form[^>]*action="([^"]+)"', page)
            if not found:
                raise AssertionError(f"no form on the page: {page[:500]}")
            return urllib.parse.urljoin(where[0], html.unescape(found.group(1)))

        page = fetch(verification_uri_complete)
        if 'name="device_user_code"' in page:                    # asked for the code although it was in the URI
            code = urllib.parse.parse_qs(urllib.parse.urlsplit(verification_uri_complete).query)["user_code"][0]
            page = fetch(action(page), {"device_user_code": code})
        page = fetch(action(page), {"username": username, "password": password, "credentialId": ""})
        if 'name="accept"' in page:                               # the consent screen
            page = fetch(action(page), {"accept": "Yes"})
        return page


def processes_using(path: Path) -> list[int]:
    """Processes whose command line names ``path`` (a Keycloak's state directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if str(path).encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def new_keycloak(state: Path) -> Keycloak:
    return Keycloak(state=state, http_port=free_port(), https_port=free_port(), management_port=free_port())


@contextlib.contextmanager
def keycloak_for(ca, state: Path):
    """A fresh Keycloak (state in ``state``) trusting the devices of CA ``ca`` (a CaEnv), with ``ca``
    pointed at it and its realms made by ``keycloak init-realm``; stopped afterwards, also on failure."""
    kc = new_keycloak(state)
    try:
        kc.start(truststore=ca.ca_dir / "trust.pem", fresh=True)
        ca.extra.update(kc.device_env(ca.home))
        ca.run("keycloak", "init-realm")
        yield kc
    finally:
        kc.stop()


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
