"""CLI commands that need no token, through click's CliRunner."""
import json

from click.testing import CliRunner

from device_ca.cli.main import cli


def test_policy_list_json(monkeypatch, tmp_path):
    monkeypatch.setenv("DEVICE_CA_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["policy", "list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {p["name"]: p["keycloak"] and p["keycloak"]["access_token_lifespan_s"] for p in data} == \
        {"admin": None, "badge-reader": 300, "door-lock": 300, "env-sensor": 600, "front-proxy": None,
         "manufacturing-station": None}


def test_policy_check_good_and_bad(tmp_path):
    good = CliRunner().invoke(cli, ["policy", "check", "policies/env-sensor.toml"])
    assert good.exit_code == 0 and "OK" in good.output
    bad = tmp_path / "cam.toml"
    bad.write_text('subject = "CN={device_id}"\nvalidity = "9999d"\n')
    result = CliRunner().invoke(cli, ["policy", "check", str(bad)])
    assert result.exit_code == 3
    assert result.output.strip() == "device-ca: policy cam.toml: 'validity' of 9999d exceeds the ceiling of 1826 days"


def test_commands_without_a_ca_say_so(monkeypatch, tmp_path):
    monkeypatch.setenv("DEVICE_CA_HOME", str(tmp_path))
    for args in (["ca", "show"], ["ca", "chain"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 5 and "run 'device-ca init' first" in result.output
    result = CliRunner().invoke(cli, ["show", "zz-not-hex"])
    assert result.exit_code == 3 and "not a hex serial" in result.output
    result = CliRunner().invoke(cli, ["reconcile", "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == []
