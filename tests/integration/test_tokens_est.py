"""Bootstrap tokens through the real CLI and over EST with curl (issue 18, item 6): `token list` never
shows a secret; a withdrawn or expired token gets the same 401 as a wrong one and changes nothing
(no certificate, no audit event, the token still unused)."""
from __future__ import annotations

import datetime as dt
import json

import pytest

from integration.cli_harness import new_ca_env
from integration.est_pki import simpleenroll

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _expired_token(env, device: str) -> str:
    """A token created two hours ago with a one-hour lifetime (the CLI's clock cannot be set back)."""
    from device_ca.ca.clock import FixedClock
    from device_ca.config import Settings
    from device_ca.services import Services

    services = Services(Settings.load(env.env), clock=FixedClock(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)))
    try:
        return services.est.create_token("badge-reader", device, dt.timedelta(hours=1), "test").secret
    finally:
        services.store.db.dispose()


def _events(env) -> int:
    return len(env.run("audit", "export").stdout.splitlines())


def test_withdrawn_and_expired_tokens_get_401_like_a_wrong_one(tmp_path, database_url, serve):
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    server = serve(env, "--rate-limit", "0")
    created = {d: json.loads(env.run("token", "create", "--policy", "badge-reader", "--device-id", d,
                                     "--json").stdout) for d in ("br-1", "br-2", "br-3")}
    expired = _expired_token(env, "br-4")
    revoked = env.run("token", "revoke", created["br-2"]["id"])
    assert f"withdrew token {created['br-2']['id']} (br-2" in revoked.stdout.decode()
    secrets = [t["secret"] for t in created.values()] + [expired]

    listing = json.loads(env.run("token", "list", "--json").stdout)
    table = env.run("token", "list").stdout.decode()
    states = {t["device_id"]: t["state"] for t in listing}
    assert states == {"br-1": "open", "br-2": "withdrawn", "br-3": "open", "br-4": "expired"}
    assert [t["id"] for t in json.loads(env.run("token", "list", "--device-id", "br-2", "--json").stdout)] \
        == [created["br-2"]["id"]]
    assert json.loads(env.run("token", "list", "--policy", "door-lock", "--json").stdout) == []
    assert all(s not in table and s not in json.dumps(listing) for s in secrets)
    assert "withdrawn" in table and created["br-2"]["id"] in table

    before = _events(env)
    answers = {case: simpleenroll(server, tmp_path, device, secret)
               for case, device, secret in (("withdrawn", "br-2", created["br-2"]["secret"]),
                                             ("expired", "br-4", expired),
                                             ("wrong", "br-3", "not-the-secret"),
                                             ("another device's", "br-3", created["br-1"]["secret"]))}
    assert {case: status for case, (status, _, _) in answers.items()} == dict.fromkeys(answers, 401)
    assert len({body for _, body, _ in answers.values()}) == 1           # one answer for every refusal
    assert _events(env) == before
    for device in ("br-2", "br-3", "br-4"):
        assert json.loads(env.run("list", "--device-id", device, "--json").stdout) == []
    assert {t["device_id"]: t["state"] for t in json.loads(env.run("token", "list", "--json").stdout)} == states

    status, _, _ = simpleenroll(server, tmp_path, "br-3", created["br-3"]["secret"])    # the open one still works
    assert status == 200
    again = env.run("token", "revoke", created["br-3"]["id"], check=False)
    assert again.returncode == 6 and b"already used" in again.stderr
    assert all(s.encode() not in server.log.read_bytes() for s in secrets)
