"""Hostile clients against a running `device-ca serve` (issue 15): bodies over the limit however
they are framed, health that tells the network nothing, OCSP caches bounded in bytes, a budget
for live-signed (nonce) answers."""
from __future__ import annotations

import base64
import json
import subprocess
import urllib.request

import pytest

from integration.cli_harness import new_ca_env
from integration.est_pki import device_csr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_database_url, module_serve):
    tmp = tmp_path_factory.mktemp("hostile")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    return env, module_serve(env, "--rate-limit", "0"), tmp


def _token(env, policy, device):
    return env.run("token", "create", "--policy", policy, "--device-id", device).stdout.decode().strip()


def test_chunked_bodies_over_the_limit_are_413(served):
    """A body without Content-Length (chunked) over EST's 64 KiB is refused 413 like a declared
    one, and the bootstrap token it carried is still unused (nothing happened)."""
    env, server, tmp = served
    secret = _token(env, "badge-reader", "br-901")
    big = base64.b64encode(b"\x30" * (70 * 1024))
    for framing in (("-H", "Transfer-Encoding: chunked"), ()):
        status, body, _ = server.curl("/badge-reader/simpleenroll", "-u", f"br-901:{secret}",
                                      "-H", "Content-Type: application/pkcs10", *framing, body=big)
        assert status == 413, (framing, status, body)
    _, csr = device_csr(tmp, "br-901", "/O=BuildingCo/OU=badge-reader/CN=br-901",
                        san="URI:urn:dev:ops:buildingco-badge-reader-br-901")
    status, body, _ = server.curl("/badge-reader/simpleenroll", "-u", f"br-901:{secret}",
                                  "-H", "Content-Type: application/pkcs10", body=csr)
    assert status == 200, body                                   # the token was still unused


def test_health_tells_the_network_only_ok_and_the_operator_everything(served):
    env, server, _ = served
    for url in (f"{server.http}/healthz",):
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
    status, body, _ = server.curl("/../../healthz")           # curl squashes the dots: the HTTPS /healthz
    assert status == 200 and json.loads(body) == {"status": "ok"}, body
    shown = env.run("health").stdout.decode()
    assert shown.splitlines() == ["database  ok", "hsm       ok"], shown
    broken = env.run("health", check=False, DEVICE_CA_HSM_PIN_FILE="", DEVICE_CA_HSM_PIN="not-the-pin")
    assert broken.returncode == 9, broken.stderr
    assert "hsm       unavailable:" in broken.stdout.decode() and b"PIN" in broken.stdout + broken.stderr
