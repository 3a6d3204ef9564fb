"""SoftHSM2 tokens for the hsm tests: one token directory for the whole pytest process.

python-pkcs11 loads a module once per process and SoftHSM reads SOFTHSM2_CONF (and its
token directory) in C_Initialize, so every token these tests need is initialised here,
before anything loads PKCS#11. Set DEVICE_CA_TEST_SOFTHSM_DIR to share a directory with
other test packages (its softhsm2.conf is reused, or written when absent); otherwise a
temporary directory is used. PINs are random per run and reach SoftHSM only through a
pseudo-terminal (hsm.softhsm.init_token) and environment variables, never a command line.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hsm import TokenConfig, open_token
from hsm.softhsm import init_token, write_config

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = os.environ.get("DEVICE_CA_TEST_PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")


@dataclass
class SoftHsm:
    directory: Path
    conf: Path
    module: str
    pin: str = field(repr=False)
    labels: dict[str, str]

    def config(self, role: str = "main") -> TokenConfig:
        return TokenConfig(self.module, self.labels[role], self.pin)

    def token_dir(self, role: str) -> Path:
        """The SoftHSM directory holding the token of ``role`` (found by its label)."""
        padded = self.labels[role].encode().ljust(32)
        for candidate in self.tokens_root().iterdir():
            marker = candidate / "token.object"
            if marker.is_file() and padded in marker.read_bytes():
                return candidate
        raise LookupError(self.labels[role])

    def tokens_root(self) -> Path:
        for line in self.conf.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "directories.tokendir":
                return Path(value.strip())
        raise LookupError("directories.tokendir")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICE_CA_HSM_PIN")}
        env["SOFTHSM2_CONF"] = str(self.conf)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.update(extra)
        return env

    def run_python(self, code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", code, *args], env=self.env(**env), cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def hsm_softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    if not os.path.isfile(MODULE) or shutil.which("softhsm2-util") is None:
        pytest.fail("SoftHSM2 is not installed (apt-get install softhsm2; scripts/setup.sh does it)")
    shared = os.environ.get("DEVICE_CA_TEST_SOFTHSM_DIR")
    directory = Path(shared) if shared else tmp_path_factory.mktemp("softhsm")
    conf = write_config(directory)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    run = secrets.token_hex(4)
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    labels = {"main": f"hsmtest-{run}-main", "spare": f"hsmtest-{run}-spare", "gone": f"hsmtest-{run}-gone"}
    for label in labels.values():
        init_token(label, pin, so_pin, env=os.environ.copy())  # PINs via a pseudo-terminal
    hsm = SoftHsm(directory, conf, MODULE, pin, labels)
    yield hsm
    if shared:  # leave a shared directory as we found it
        for label in labels.values():
            subprocess.run(["softhsm2-util", "--delete-token", "--token", label],
                           capture_output=True, env=os.environ.copy())


@pytest.fixture(scope="session")
def hsm_token(hsm_softhsm: SoftHsm):
    token = open_token(hsm_softhsm.config("main"))
    yield token
    token.close()


@pytest.fixture(scope="session")
def hsm_keys(hsm_token):
    """One key of each kind the CA uses, generated once per run."""
    return {spec: hsm_token.generate_key(f"test-{spec}", spec) for spec in ("ec:P-256", "ec:P-384", "rsa:3072")}
