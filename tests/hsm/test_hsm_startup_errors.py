"""Start-up failures (reliability case F5), each in its own process: python-pkcs11 loads a
module once per process, so a wrong module or SOFTHSM2_CONF must not poison the test process.

Every case must end with exit code 3 and exactly one line on stderr naming the reason,
never a traceback or a crash (negative exit code), and never the PIN.
"""
from __future__ import annotations

import ctypes.util
import os

import pytest

pytestmark = pytest.mark.integration

SCRIPT = r"""
import sys
from hsm import HsmError, TokenConfig, open_token, pin_from_env
try:
    token = open_token(TokenConfig(sys.argv[1], sys.argv[2], pin_from_env()))
    token.ping()
    labels = token.labels()
    token.close()
except HsmError as error:
    sys.stderr.write(f"device-ca: HSM {error.reason}: {error}\n")
    sys.exit(3)
print("ok", len(labels))
"""


def _run(hsm_softhsm, module: str, label: str, pin: str | None, **env: str):
    if pin is not None:
        env["DEVICE_CA_HSM_PIN"] = pin
    return hsm_softhsm.run_python(SCRIPT, module, label, **env)


def _assert_refused(result, reason: str, *secrets: str) -> str:
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"device-ca: HSM {reason}: "), lines[0]
    for secret in secrets:
        assert secret not in result.stderr and secret not in result.stdout
    return lines[0]


def test_valid_configuration_starts(hsm_softhsm) -> None:
    result = _run(hsm_softhsm, hsm_softhsm.module, hsm_softhsm.labels["spare"], hsm_softhsm.pin)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok") and result.stderr == ""


def test_missing_module(hsm_softhsm) -> None:
    result = _run(hsm_softhsm, "/nonexistent/libpkcs11.so", hsm_softhsm.labels["main"], hsm_softhsm.pin)
    line = _assert_refused(result, "module", hsm_softhsm.pin)
    assert "/nonexistent/libpkcs11.so" in line and "not found" in line


def test_module_that_is_not_a_library(hsm_softhsm, tmp_path) -> None:
    bogus = tmp_path / "libbogus.so"
    bogus.write_text("not an ELF file\n")
    result = _run(hsm_softhsm, str(bogus), hsm_softhsm.labels["main"], hsm_softhsm.pin)
    _assert_refused(result, "module", hsm_softhsm.pin)


def test_library_without_pkcs11_entry_point(hsm_softhsm) -> None:
    name = ctypes.util.find_library("z")
    if name is None:
        pytest.fail("libz not found")
    path = next((p for p in (f"/lib/x86_64-linux-gnu/{name}", f"/usr/lib/x86_64-linux-gnu/{name}")
                 if os.path.exists(p)), None)
    if path is None:
        pytest.fail("libz path not found")
    result = _run(hsm_softhsm, path, hsm_softhsm.labels["main"], hsm_softhsm.pin)
    line = _assert_refused(result, "module", hsm_softhsm.pin)
    assert "C_GetFunctionList" in line


def test_module_that_fails_to_initialise(hsm_softhsm, tmp_path) -> None:
    result = _run(hsm_softhsm, hsm_softhsm.module, hsm_softhsm.labels["main"], hsm_softhsm.pin,
                  SOFTHSM2_CONF=str(tmp_path / "missing.conf"))
    line = _assert_refused(result, "module", hsm_softhsm.pin)
    assert "failed to initialise" in line and "SOFTHSM2_CONF" in line


def test_unknown_token_label(hsm_softhsm) -> None:
    result = _run(hsm_softhsm, hsm_softhsm.module, "no-such-token", hsm_softhsm.pin)
    line = _assert_refused(result, "token", hsm_softhsm.pin)
    assert "'no-such-token'" in line
    assert repr(hsm_softhsm.labels["main"]) in line  # lists the labels that do exist


def test_wrong_pin(hsm_softhsm) -> None:
    wrong = "wrong-" + hsm_softhsm.pin[::-1]
    result = _run(hsm_softhsm, hsm_softhsm.module, hsm_softhsm.labels["spare"], wrong)
    line = _assert_refused(result, "pin", wrong, hsm_softhsm.pin)
    assert "CKR_PIN_INCORRECT" in line and repr(hsm_softhsm.labels["spare"]) in line


def test_no_pin(hsm_softhsm) -> None:
    result = _run(hsm_softhsm, hsm_softhsm.module, hsm_softhsm.labels["spare"], None)
    line = _assert_refused(result, "pin")
    assert "DEVICE_CA_HSM_PIN" in line


def test_pin_from_file(hsm_softhsm, tmp_path) -> None:
    path = tmp_path / "pin"
    path.write_text(hsm_softhsm.pin + "\n")
    result = _run(hsm_softhsm, hsm_softhsm.module, hsm_softhsm.labels["spare"], None,
                  DEVICE_CA_HSM_PIN_FILE=str(path))
    assert result.returncode == 0, result.stderr


RETRY_SCRIPT = r"""
import os, sys
from hsm import HsmError, TokenConfig, Token
token = Token(TokenConfig(sys.argv[1], sys.argv[2], os.environ["DEVICE_CA_HSM_PIN"]))
good_conf = os.environ["SOFTHSM2_CONF"]
os.environ["SOFTHSM2_CONF"] = sys.argv[3]
try:
    token.open()
except HsmError as error:
    print("first:", error.reason)
os.environ["SOFTHSM2_CONF"] = good_conf  # python-pkcs11 did not cache the failed module
token.open()
token.ping()
print("second: ok")
"""


def test_failed_initialisation_can_be_retried_in_process(hsm_softhsm, tmp_path) -> None:
    result = hsm_softhsm.run_python(RETRY_SCRIPT, hsm_softhsm.module, hsm_softhsm.labels["spare"],
                                    str(tmp_path / "missing.conf"), DEVICE_CA_HSM_PIN=hsm_softhsm.pin)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["first: module", "second: ok"]
