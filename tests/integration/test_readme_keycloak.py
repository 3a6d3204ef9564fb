"""The README's Keycloak walk-through, run as it stands after `make demo` (issue 16, item 7): its
commands are taken from README.md between the `readme-keycloak` markers and run by bash in the
repository, with Keycloak on free ports and its own state directory (the commands read the ports
and the state directory from the environment, with the documented defaults)."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from integration.cli_harness import ROOT
from integration.keycloak_harness import Keycloak, processes_using, wait_for
from integration.server_harness import free_port

pytestmark = [pytest.mark.keycloak, pytest.mark.integration, pytest.mark.slow]


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- readme-keycloak -->\s*```sh\n(.*?)```\s*<!-- /readme-keycloak -->", text, re.S)
    assert found, "README.md has no readme-keycloak block"
    return found.group(1)


def test_the_readme_keycloak_section_works_after_the_demo(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVICE_CA_", "KC_", "KEYCLOAK_", "SOFTHSM2"))}
    env.update({"DEMO_HTTPS_PORT": str(free_port()), "DEMO_HTTP_PORT": str(free_port())})
    demo = subprocess.run(["scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]

    kc = Keycloak(state=tmp_path / "kc", http_port=free_port(), https_port=free_port(), management_port=free_port())
    env.update({"KEYCLOAK_STATE": str(kc.state), "KEYCLOAK_HTTP_PORT": str(kc.http_port),
                "KEYCLOAK_HTTPS_PORT": str(kc.https_port), "KEYCLOAK_MANAGEMENT_PORT": str(kc.management_port)})
    try:
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block()], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        kc.stop()
    out = run.stdout
    assert "smart-building: create realm" in out, out
    claims = json.loads(out[out.index("{"):out.index("\n}") + 2])
    assert claims["azp"] == claims["device_id"] == "door-lock-floor-1-room-101"
    assert claims["device_class"] == "door-lock" and claims["cnf"]["x5t#S256"]
    assert {"mqtt-broker", "building-api"} <= set(claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]])
    assert "last sync: " in out and "last sync: -" not in out
    assert "keycloak: stopping Keycloak" in out
    wait_for(lambda: not processes_using(kc.state), 30, what="the walk-through's Keycloak to be gone")


def test_demo_keycloak_ends_with_a_relying_party_that_checks_the_binding(tmp_path):
    """Item 6: `make demo-keycloak`'s script on free ports: the lock's token opens the door with the
    lock's certificate (200), not with another device's (401), and not after the lock's revocation
    (401, introspection); nothing it started is left running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVICE_CA_", "KC_", "KEYCLOAK_", "SOFTHSM2"))}
    state = tmp_path / "kc"
    env.update({"DEMO_HTTPS_PORT": str(free_port()), "DEMO_HTTP_PORT": str(free_port()),
                "DEMO_RP_PORT": str(free_port()), "KEYCLOAK_STATE": str(state),
                "KEYCLOAK_HTTP_PORT": str(free_port()), "KEYCLOAK_HTTPS_PORT": str(free_port()),
                "KEYCLOAK_MANAGEMENT_PORT": str(free_port())})
    kc = Keycloak(state=state, http_port=int(env["KEYCLOAK_HTTP_PORT"]), https_port=int(env["KEYCLOAK_HTTPS_PORT"]),
                  management_port=int(env["KEYCLOAK_MANAGEMENT_PORT"]))
    try:
        run = subprocess.run(["scripts/demo-keycloak.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=900, start_new_session=True)
    finally:
        kc.stop()
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    assert re.search(r"the lock, its own certificate: +\{.*\"opened_for\":\"door-lock-floor-1-room-\d+\".* HTTP 200", out), out
    assert re.search(r"the same token, a badge reader's cert: +\{.*bound to another certificate.* HTTP 401", out), out
    assert re.search(r"the lock, after revocation: +\{.*no longer active.* HTTP 401", out), out
    wait_for(lambda: not processes_using(state), 30, what="the demo's Keycloak to be gone")
    for port in (env["DEMO_HTTPS_PORT"], env["DEMO_RP_PORT"]):
        assert subprocess.run(["curl", "-sk", "--max-time", "2", f"https://127.0.0.1:{port}/"]).returncode == 7
