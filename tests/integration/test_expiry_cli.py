"""`device-ca expiring`, and the expiry marks of `list` and `show`, with the real command, SoftHSM
and certificates of a few seconds' validity (test policies; the command uses the system clock)."""
from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from integration.cli_harness import new_ca_env, openssl_csr
from integration.server_harness import policy_dir_with

pytestmark = pytest.mark.integration

POLICIES = {
    # in its renewal window two seconds after issue, expired after thirty (a CLI call takes about one)
    "brief": 'subject = "CN={device_id},OU=brief,O=BuildingCo"\nvalidity = "30s"\nrenewal_window = "28s"\n'
             'enrollment = ["admin"]\n',
    "soon": 'subject = "CN={device_id},OU=soon,O=BuildingCo"\nvalidity = "2d"\nrenewal_window = "1d"\n'
            'enrollment = ["admin"]\n',
}


@pytest.fixture
def ca_env(tmp_path, database_url):
    env = new_ca_env(tmp_path, database_url)
    env.extra["DEVICE_CA_POLICY_DIR"] = str(policy_dir_with(tmp_path, POLICIES))
    env.run("init", "--organization", "BuildingCo")
    return env


def _issue(env, tmp_path, policy: str, device_id: str, ou: str) -> dict:
    csr = openssl_csr(tmp_path, device_id, f"/O=BuildingCo/OU={ou}/CN={device_id}")
    env.run("issue", "--policy", policy, "--csr", str(csr), "--out", str(tmp_path / f"{device_id}.pem"))
    [record] = json.loads(env.run("list", "--device-id", device_id, "--json").stdout)
    return record


def _until(not_after: str, offset: float) -> None:
    at = dt.datetime.strptime(not_after, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp() + offset
    time.sleep(max(0.0, at - time.time()))


def _serials(env, *args) -> list[str]:
    return [e["serial"] for e in json.loads(env.run("expiring", "--json", *args).stdout)]


def test_expiring_lists_the_renewal_window_and_list_show_mark_it(ca_env, tmp_path):
    lock = _issue(ca_env, tmp_path, "door-lock", "lock-1", "door-lock")        # 365d, window 30d
    soon = _issue(ca_env, tmp_path, "soon", "soon-1", "soon")                   # 2d, window 1d
    brief = _issue(ca_env, tmp_path, "brief", "brief-1", "brief")               # 30s, window 28s
    _until(brief["not_after"], -27.5)                                          # (notAfter has whole seconds)
    assert _serials(ca_env) == [brief["serial"]]
    assert _serials(ca_env, "--within", "3d") == [brief["serial"], soon["serial"]]
    assert _serials(ca_env, "--within", "3d", "--policy", "soon") == [soon["serial"]]
    assert _serials(ca_env, "--policy", "door-lock") == []
    marks = {r["device_id"]: r["expiry"] for r in json.loads(ca_env.run("list", "--json").stdout)}
    assert marks == {"lock-1": None, "soon-1": None, "brief-1": "renewal-window"}
    text = ca_env.run("expiring").stdout.decode()
    assert "brief-1" in text and "lock-1" not in text and "0m " in text          # time left: "0m 25s"
    shown = ca_env.run("show", brief["serial"]).stdout.decode()
    assert any(line.split() == ["expiry", "renewal-window"] for line in shown.splitlines())
    assert "expiry" not in ca_env.run("show", lock["serial"]).stdout.decode()

    _until(brief["not_after"], 0.5)
    assert _serials(ca_env) == []
    assert ca_env.run("expiring").stdout.decode().strip() == "no certificates inside their renewal window"
    expired = json.loads(ca_env.run("expiring", "--expired", "--json").stdout)
    assert [(e["serial"], e["expired"]) for e in expired] == [(brief["serial"], True)]
    assert expired[0]["expires_in_s"] <= 0
    listing = ca_env.run("list").stdout.decode().splitlines()
    assert listing[0].split()[-1] == "EXPIRY"
    assert [line.split()[-1] for line in listing if "brief-1" in line] == ["expired"]
    assert json.loads(ca_env.run("show", brief["serial"], "--json").stdout)["expiry"] == "expired"


def test_expiring_refuses_bad_arguments(ca_env):
    bad = ca_env.run("expiring", "--within", "soon", check=False)
    assert bad.returncode == 3 and b"--within" in bad.stderr
    unknown = ca_env.run("expiring", "--policy", "no-such-policy", check=False)
    assert unknown.returncode == 5 and b"unknown policy" in unknown.stderr
