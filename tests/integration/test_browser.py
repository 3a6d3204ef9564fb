"""The browser harness (tests/integration/browser.py) against a real `device-ca serve` on SoftHSM:
headless Chromium presents a manufacturing station's client certificate, auto-selected, and reads
its batch from /api/v1/batches over mutual TLS; without a certificate it gets the refusal; with
another CA as its only trust anchor it does not accept the server at all."""
from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from helpers import make_csr
from integration.browser import browsers  # noqa: F401 - the fixture
from integration.cli_harness import new_ca_env, openssl, openssl_csr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_database_url, module_serve):
    tmp = tmp_path_factory.mktemp("browser")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    station = openssl_csr(tmp, "station-line-7", "/O=BuildingCo/OU=manufacturing-station/CN=station-line-7")
    env.run("issue", "--policy", "manufacturing-station", "--csr", str(station),
            "--out", str(tmp / "station-line-7.pem"), "--allow-policy", "env-sensor")
    server = module_serve(env, "--rate-limit", "0")
    _submit(server, tmp, "line7-001", ["env-b001", "env-b002"])
    return env, server, tmp


def _submit(server, tmp, batch_id, devices) -> None:
    """A batch submitted by the station with curl, waited for until done."""
    base = server.est.replace("/.well-known/est", "")
    body = b"".join(json.dumps({"device_id": d, "csr": base64.b64encode(
        make_csr(d, ou="env-sensor", encoding=Encoding.DER)).decode()}).encode() + b"\n" for d in devices)
    client = ["--cacert", str(server.chain), "--cert", str(tmp / "station-line-7.pem"),
              "--key", str(tmp / "station-line-7.key"), "-s", "--max-time", "60"]
    proc = subprocess.run(["curl", *client, "-H", "Content-Type: application/x-ndjson", "--data-binary", "@-",
                           "-w", "\n%{http_code}", f"{base}/api/v1/batches?policy=env-sensor&batch_id={batch_id}"],
                          input=body, capture_output=True, timeout=90)
    assert proc.stdout.rsplit(b"\n", 1)[-1] == b"202", proc.stdout
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        proc = subprocess.run(["curl", *client, f"{base}/api/v1/batches/{batch_id}"], capture_output=True, timeout=90)
        if json.loads(proc.stdout)["state"] == "done":
            return
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} not done: {proc.stdout!r}")


def _origin(server) -> str:
    return f"https://127.0.0.1:{server.port}"


def test_station_certificate_is_auto_selected(served, browsers):  # noqa: F811
    env, server, tmp = served
    started = time.monotonic()
    browser = browsers(_origin(server), server.chain, tmp / "station-line-7.pem", tmp / "station-line-7.key")
    page = browser.open(f"{_origin(server)}/api/v1/batches/line7-001")
    shot = browser.screenshot("batch-with-station-certificate")
    assert page.status == 200
    batch = json.loads(page.text)
    assert (batch["batch"], batch["state"], batch["issued"]) == ("line7-001", "done", 2)
    assert shot.stat().st_size > 1000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert time.monotonic() - started < 60


def test_without_certificate_the_browser_is_refused(served, browsers):  # noqa: F811
    env, server, tmp = served
    browser = browsers(_origin(server), server.chain)
    page = browser.open(f"{_origin(server)}/api/v1/batches/line7-001")
    browser.screenshot("batch-without-certificate")
    assert page.status == 401                     # with WWW-Authenticate: the browser holds a login prompt
    assert "line7-001" not in page.text


def test_the_server_certificate_is_verified(served, browsers, tmp_path):  # noqa: F811
    """A browser that trusts another root gets Chromium's interstitial, not the page: the harness
    trusts device-ca's server through its NSS database, not by accepting any certificate."""
    env, server, tmp = served
    other = tmp_path / "other-root.pem"
    proc = openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                   "-keyout", str(tmp_path / "other-root.key"), "-subj", "/CN=Another Root", "-days", "2",
                   "-out", str(other))
    assert proc.returncode == 0, proc.stderr
    browser = browsers(_origin(server), other, tmp / "station-line-7.pem", tmp / "station-line-7.key")
    page = browser.open(f"{_origin(server)}/api/v1/batches/line7-001")
    browser.screenshot("untrusted-server")
    assert "ERR_CERT_AUTHORITY_INVALID" in page.text
    assert page.status == 0 and "line7-001" not in page.text


def test_quit_leaves_no_browser_or_driver_running(served, tmp_path):
    """What the fixture's finalizer does whether the test passed or failed: chromedriver and every
    Chromium process under it are gone."""
    from integration.browser import Browsers
    from integration.tls_tools import children

    env, server, tmp = served
    started = Browsers(tmp_path)
    browser = started(_origin(server), server.chain)
    driver_pid = browser.driver.service.process.pid
    below = children(driver_pid)
    assert below, "chromedriver started no browser"
    started.quit_all()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in [driver_pid, *below]):
        time.sleep(0.1)
    assert not [pid for pid in [driver_pid, *below] if _alive(pid)]
    assert started.started == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"          # a zombie has exited
    except FileNotFoundError:
        return False
