"""scripts/hsm-init.sh KIND [stop]: the daemons started, the token made, the PINs in 0600 files and in no
other file, the CA's settings in DIR/env; `stop` ends every process `start` started. (openCryptoki's one
soft token is set up the same way by the matrix's scratch() through the same Provisioner.)"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.hsm_matrix]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _env_file(path) -> dict[str, str]:
    """The variables of DIR/env, read by the shell that would source it."""
    out = subprocess.run(["bash", "-c", f". {path} && env -0"], capture_output=True, check=True, env={}).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


@pytest.mark.parametrize("kind", ["softhsm", "tpm"])
def test_hsm_init_script_starts_makes_the_token_and_stops(kind, tmp_path):
    state = tmp_path / kind
    script = os.path.join(ROOT, "scripts", "hsm-init.sh")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICE_CA_")} | {"DEVICE_CA_HSM_STATE": str(state)}
    started = subprocess.run([script, kind], env=env, capture_output=True, text=True, timeout=300)
    pids = json.loads((state / "pids").read_text()) if (state / "pids").exists() else {}
    try:
        assert started.returncode == 0, started.stderr
        assert "ready" in started.stdout
        settings = _env_file(state / "env")
        assert settings["DEVICE_CA_HSM_TOKEN"] == "device-ca"
        assert settings["DEVICE_CA_HSM_PIN_FILE"] == str(state / "pin")
        pin = (state / "pin").read_text().strip()
        for name in ("pin", "so-pin"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
        assert pin and pin not in (state / "env").read_text() and pin not in started.stdout + started.stderr
        if kind == "tpm":
            assert set(pids) == {"dbus-daemon", "swtpm", "tpm2-abrmd"} and all(_alive(p) for p in pids.values())
        info = subprocess.run([sys.executable, "-m", "device_ca.cli.main", "hsm", "info", "--json"],
                              env=env | settings | {"DEVICE_CA_HOME": str(tmp_path / "home"),
                                                    "DEVICE_CA_DATABASE_URL": f"sqlite:///{tmp_path / 'ca.db'}"},
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["token"]["label"] == "device-ca" and pin not in info.stdout
        again = subprocess.run([script, kind], env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and (state / "pin").read_text().strip() == pin   # idempotent: same token
    finally:
        stopped = subprocess.run([script, kind, "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert not (state / "pids").exists()
    assert not any(_alive(p) for p in pids.values())


def test_hsm_init_script_refuses_an_unknown_kind(tmp_path):
    proc = subprocess.run([os.path.join(ROOT, "scripts", "hsm-init.sh"), "yubihsm"], capture_output=True, text=True,
                          env=os.environ | {"DEVICE_CA_HSM_STATE": str(tmp_path / "x")})
    assert proc.returncode == 2 and "usage" in proc.stderr
    assert not (tmp_path / "x").exists()
