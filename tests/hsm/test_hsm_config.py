"""TokenConfig, pin_from_env and HsmError: no PKCS#11 involved."""
from __future__ import annotations


import pytest

from hsm import HsmError, Token, TokenConfig, pin_from_env

SECRET = "s3cr3t-PIN-do-not-print"


def test_pin_from_env_variable() -> None:
    assert pin_from_env({"DEVICE_CA_HSM_PIN": SECRET}) == SECRET


def test_pin_variable_wins_over_file(tmp_path) -> None:
    path = tmp_path / "pin"
    path.write_text("from-file\n")
    env = {"DEVICE_CA_HSM_PIN": SECRET, "DEVICE_CA_HSM_PIN_FILE": str(path)}
    assert pin_from_env(env) == SECRET


@pytest.mark.parametrize("content", [SECRET + "\n", SECRET + "\r\n", SECRET])
def test_pin_from_file_strips_trailing_newline(tmp_path, content: str) -> None:
    path = tmp_path / "pin"
    path.write_bytes(content.encode())
    assert pin_from_env({"DEVICE_CA_HSM_PIN_FILE": str(path)}) == SECRET


def test_pin_file_keeps_inner_whitespace(tmp_path) -> None:
    path = tmp_path / "pin"
    path.write_text(" a b \n")
    assert pin_from_env({"DEVICE_CA_HSM_PIN_FILE": str(path)}) == " a b "


def test_no_pin_configured() -> None:
    with pytest.raises(HsmError) as info:
        pin_from_env({})
    assert info.value.reason == "pin"
    assert str(info.value) == "no HSM PIN: set DEVICE_CA_HSM_PIN or DEVICE_CA_HSM_PIN_FILE"


def test_unreadable_pin_file(tmp_path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(HsmError) as info:
        pin_from_env({"DEVICE_CA_HSM_PIN_FILE": str(missing)})
    assert info.value.reason == "pin"
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


def test_pin_file_is_a_directory(tmp_path) -> None:
    with pytest.raises(HsmError) as info:
        pin_from_env({"DEVICE_CA_HSM_PIN_FILE": str(tmp_path)})
    assert info.value.reason == "pin"


def test_empty_pin_file(tmp_path) -> None:
    path = tmp_path / "pin"
    path.write_text("\n")
    with pytest.raises(HsmError) as info:
        pin_from_env({"DEVICE_CA_HSM_PIN_FILE": str(path)})
    assert info.value.reason == "pin"


def test_config_repr_hides_pin() -> None:
    config = TokenConfig("/usr/lib/softhsm/libsofthsm2.so", "ca", SECRET)
    assert SECRET not in repr(config) and SECRET not in str(config)
    assert "ca" in repr(config)


def test_token_repr_hides_pin_and_does_not_load_anything() -> None:
    token = Token(TokenConfig("/nonexistent/module.so", "ca", SECRET))  # lazy: no error yet
    assert SECRET not in repr(token)
    with pytest.raises(HsmError) as info:
        token.open()
    assert info.value.reason == "module"
    assert "/nonexistent/module.so" in str(info.value) and SECRET not in str(info.value)


def test_hsm_error_is_one_line_and_checks_reason() -> None:
    error = HsmError("device", "first line\nsecond line")
    assert str(error) == "first line second line"
    assert error.reason == "device"
    with pytest.raises(ValueError):
        HsmError("bogus", "message")


def test_hsm_error_survives_pickling() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(HsmError("fork", "opened before fork")))
    assert isinstance(error, HsmError) and error.reason == "fork" and str(error) == "opened before fork"
