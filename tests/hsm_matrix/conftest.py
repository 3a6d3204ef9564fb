"""The three PKCS#11 implementations of the HSM matrix (``pytest -m hsm_matrix``), each started by
the tests from a clean machine and stopped afterwards (also when a test fails):

* ``softhsm``: SoftHSM 2.6 in its own token directory;
* ``opencryptoki``: openCryptoki 3.8's soft token behind pkcsslotd (machine-wide: taken under a
  lock, its files set aside and put back, see ``hsm.provision.scratch``);
* ``tpm``: tpm2-pkcs11 1.9 on the swtpm TPM 2.0 simulator through tpm2-abrmd.

Everything that touches a module runs in a child process with that module's environment
(``Module.env``), as device-ca itself does: python-pkcs11 loads a module once per process and SoftHSM
and tpm2-pkcs11 read their settings at C_Initialize.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hsm.provision import MODULES, PACKAGES, Provisioner, ProvisionError, scratch
from integration.conftest import serve  # noqa: F401 - the `serve` fixture (servers stopped after each test)

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parent / "probe.py"
KINDS = ("softhsm", "opencryptoki", "tpm")
# What device-ca's CA uses on each: the first key type the token can make of ec:P-256, rsa:3072.
CA_KEY_TYPES = {"softhsm": "ec:P-256", "opencryptoki": "rsa:3072", "tpm": "ec:P-256"}


@dataclass
class Module:
    kind: str
    provisioner: Provisioner

    @property
    def path(self) -> str:
        return MODULES[self.kind]

    @property
    def label(self) -> str:
        return self.provisioner.label

    @property
    def pin(self) -> str:
        return self.provisioner.pin_file.read_text().strip()

    @property
    def ca_key_type(self) -> str:
        return CA_KEY_TYPES[self.kind]

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process using this module (PIN by file, never in the environment)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICE_CA_") and k != "SOFTHSM2_CONF"}
        env.update(self.provisioner.env())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env.update(extra)
        return env

    def probe(self, name: str, *args: str, **env: str) -> dict:
        """Run ``probe.py name args`` in a child process with this module; its JSON answer."""
        proc = subprocess.run([sys.executable, str(PROBE), name, *args], env=self.env(**env), cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"probe {name} on {self.kind} exited {proc.returncode}: {proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def restart(self) -> None:
        """Start again whatever of the module's daemons is not running (after a test stopped one)."""
        self.provisioner.start()


@pytest.fixture(scope="session", params=KINDS)
def pkcs11_module(request, tmp_path_factory) -> Iterator[Module]:
    kind = request.param
    if not os.path.isfile(MODULES[kind]):
        pytest.fail(f"{MODULES[kind]} is missing: apt-get install {PACKAGES[kind]} (scripts/setup.sh does it)")
    directory = tmp_path_factory.mktemp(f"pkcs11-{kind}")
    with contextlib.ExitStack() as stack:
        try:
            provisioner = stack.enter_context(scratch(kind, directory))
        except ProvisionError as exc:
            pytest.fail(f"{kind}: {exc}")
        yield Module(kind, provisioner)
