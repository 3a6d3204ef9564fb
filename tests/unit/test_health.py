"""/healthz tells the network only ok or unavailable (issue 15, item 5); the reason goes to the log."""
from __future__ import annotations

import logging

from device_ca.errors import DeviceCAError, Kind
from device_ca.web.app import create_public_app


def _failing():
    raise DeviceCAError(Kind.HSM_UNAVAILABLE, "C_Login failed: /var/lib/softhsm/tokens/secret-path PIN incorrect")


def test_unhealthy_answers_503_without_the_reason_and_logs_it(caplog):
    app = create_public_app(ca_certificates=lambda: {}, health={"database": lambda: None, "hsm": _failing})
    with caplog.at_level(logging.ERROR, logger="device_ca.web.ops"):
        response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable"}
    assert b"secret-path" not in response.data and b"hsm" not in response.data
    assert "hsm unavailable: C_Login failed" in caplog.text


def test_healthy_answers_only_ok():
    app = create_public_app(ca_certificates=lambda: {}, health={"database": lambda: None, "hsm": lambda: None})
    response = app.test_client().get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}
