"""Run the real `device-ca` command against a fresh SoftHSM token, state directory and database."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hsm.softhsm import init_token

ROOT = Path(__file__).resolve().parents[2]
MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@dataclass
class CaEnv:
    home: Path
    token: str
    pin: str = field(repr=False)
    database_url: str
    extra: dict = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICE_CA_")}
        pin_file = self.home / "hsm-pin"
        if not pin_file.exists():
            fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, self.pin.encode() + b"\n")
            os.close(fd)
        env.update({"DEVICE_CA_HOME": str(self.home), "DEVICE_CA_DATABASE_URL": self.database_url,
                    "DEVICE_CA_HSM_TOKEN": self.token, "DEVICE_CA_HSM_PIN_FILE": str(pin_file),
                    "DEVICE_CA_POLICY_DIR": str(ROOT / "policies"), "DEVICE_CA_HSM_MODULE": MODULE})
        env.update(self.extra)
        return env

    def run(self, *args: str, input: bytes | None = None, check: bool = True, **env) -> subprocess.CompletedProcess:
        merged = {**self.env, **env}
        proc = subprocess.run([sys.executable, "-m", "device_ca.cli.main", *args], env=merged, cwd=self.home,
                              input=input, capture_output=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"device-ca {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}")
        return proc

    @property
    def ca_dir(self) -> Path:
        return self.home / "ca"


def new_ca_env(tmp_path: Path, database_url: str, home_name: str = "home") -> CaEnv:
    token = f"t-{secrets.token_hex(4)}"
    pin = secrets.token_hex(8)
    init_token(token, pin, secrets.token_hex(8))
    home = tmp_path / home_name
    home.mkdir()
    return CaEnv(home=home, token=token, pin=pin, database_url=database_url)


def openssl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def openssl_csr(directory: Path, name: str, subject: str, curve: str = "P-256") -> Path:
    key, csr = directory / f"{name}.key", directory / f"{name}.csr"
    proc = openssl("req", "-new", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{curve}", "-nodes",
                   "-keyout", str(key), "-subj", subject, "-out", str(csr))
    assert proc.returncode == 0, proc.stderr
    return csr


def issue_operators(env: CaEnv, directory: Path, roles: dict[str, str]) -> None:
    """An operator certificate per name with its role (``device-ca issue --policy admin --role``):
    ``directory/NAME.pem`` and ``NAME.key``."""
    for name, role in roles.items():
        csr = openssl_csr(directory, name, f"/O=BuildingCo/OU=admin/CN={name}")
        env.run("issue", "--policy", "admin", "--csr", str(csr), "--out", str(directory / f"{name}.pem"), "--role", role)


def make_tokens(env: CaEnv, policy: str, devices: list[str]) -> dict[str, str]:
    """Bootstrap secrets for many devices at once (in-process; `device-ca token create` does the same)."""
    import datetime as dt

    from device_ca.config import Settings
    from device_ca.services import Services

    services = Services(Settings.load(env.env))
    try:
        return {d: services.est.create_token(policy, d, dt.timedelta(hours=1), "test").secret for d in devices}
    finally:
        services.store.db.dispose()
