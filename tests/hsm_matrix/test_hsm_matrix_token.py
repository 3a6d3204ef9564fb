"""The ``hsm`` package on each PKCS#11 module of the matrix: which key types each can make and with which
attributes, which mechanism each signature goes through (chosen from the token's mechanism list), login
shared between sessions, a wrong PIN, fork. Each answer comes from a child process (probe.py) with the
module's environment; the differences between the modules are asserted, so a module that changes shows."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.hsm_matrix]

# Key types each module can make; the others are refused before anything reaches the token.
MAKES = {
    "softhsm": {"ec:P-256", "ec:P-384", "rsa:2048", "rsa:3072", "rsa:4096"},
    "opencryptoki": {"rsa:2048", "rsa:3072", "rsa:4096"},      # 3.8's soft token: no EC at all
    "tpm": {"ec:P-256", "ec:P-384", "rsa:2048", "rsa:3072"},    # a TPM 2.0 stops at RSA 3072
}
# The mechanism each signature goes through.
PLANS = {
    "softhsm": {"ECDSA SHA-256": "CKM_ECDSA (digest made here)",
                "RSA PKCS#1 v1.5 SHA-256": "CKM_SHA256_RSA_PKCS (hashed on the token)",
                "RSA-PSS SHA-256": "CKM_SHA256_RSA_PKCS_PSS (hashed on the token)"},
    "opencryptoki": {"RSA PKCS#1 v1.5 SHA-256": "CKM_RSA_PKCS (digest made here)",
                     "RSA-PSS SHA-256": "CKM_SHA256_RSA_PKCS_PSS (hashed on the token)"},
    "tpm": {"ECDSA SHA-256": "CKM_ECDSA (digest made here)",
            "RSA PKCS#1 v1.5 SHA-256": "CKM_SHA256_RSA_PKCS (hashed on the token)"},
}


def test_key_types_attributes_and_signatures(pkcs11_module):
    answer = pkcs11_module.probe("keys")
    kind = pkcs11_module.kind
    made = {spec for spec, result in answer["keys"].items() if result["made"]}
    assert made == MAKES[kind]
    for spec, result in answer["keys"].items():
        if not result["made"]:
            # refused up front, naming what is missing; no object left behind
            assert result["reason"] == "key" and "cannot make" in result["error"], result
            assert result["unchanged"], result
            continue
        attributes = result["attributes"]
        assert attributes["sensitive"] and attributes["always_sensitive"], (spec, attributes)
        assert attributes["never_extractable"] and not attributes["extractable"], (spec, attributes)
        assert attributes["token"] and attributes["private"] and attributes["local"] and attributes["sign"]
        assert not attributes["unwrap"] and not attributes["derive"]
        # tpm2-pkcs11 makes every key a TPM object that can sign and decrypt; the others sign only
        assert attributes["decrypt"] is (kind == "tpm"), (spec, attributes)
        assert attributes["public_ids"] == [attributes["id"]]
        assert result["certificate"] and result["found_again"]
        for scheme, verified in result["signatures"].items():
            if scheme.startswith("rsa-pss") and "unavailable" in answer["plans"]["RSA-PSS SHA-256"]:
                assert isinstance(verified, str) and "offers neither" in verified, (scheme, verified)
            else:
                assert verified is True, (spec, scheme, verified)
    for name, plan in PLANS[kind].items():
        assert answer["plans"][name] == plan, (name, answer["plans"])
    if kind == "opencryptoki":
        assert answer["plans"]["ECDSA SHA-256"].startswith("unavailable")


def test_login_is_shared_between_sessions(pkcs11_module):
    """The second Token's C_Login meets CKR_USER_ALREADY_LOGGED_IN (taken as success); closing one session
    does not log the other out."""
    answer = pkcs11_module.probe("login")
    assert answer == {"both_signed": True, "second_still_signs": True}


def test_wrong_pin_is_a_pin_error_without_the_pin(pkcs11_module):
    answer = pkcs11_module.probe("wrong-pin")
    refused = answer["refused"]
    assert refused is not None and refused["reason"] == "pin", answer
    assert "CKR_PIN_INCORRECT" in refused["message"] and not refused["pin_in_message"]
    assert answer["right_pin_works"]


def test_wrong_pin_exits_9_on_the_command_line(pkcs11_module, tmp_path):
    import subprocess
    import sys

    wrong = tmp_path / "wrong-pin"
    wrong.write_text("0000" + pkcs11_module.pin[4:] if pkcs11_module.pin[:4] != "0000" else "1111" + pkcs11_module.pin[4:])
    wrong.chmod(0o600)
    proc = subprocess.run([sys.executable, "-m", "device_ca.cli.main", "hsm", "info"], capture_output=True, text=True,
                          env=pkcs11_module.env(DEVICE_CA_HSM_PIN_FILE=str(wrong), DEVICE_CA_HOME=str(tmp_path),
                                                DEVICE_CA_DATABASE_URL=f"sqlite:///{tmp_path / 'ca.db'}"),
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert "CKR_PIN_INCORRECT" in proc.stderr
    assert pkcs11_module.pin not in proc.stderr + proc.stdout and wrong.read_text() not in proc.stderr + proc.stdout


def test_fork_after_initialize(pkcs11_module):
    """A child forked from a process that uses the token cannot use the parent's session. SoftHSM and
    openCryptoki: the child initialises the module again and signs; tpm2-pkcs11: refused before any call
    reaches the module (its TPM connection is the parent's). The parent signs on, unharmed."""
    answer = pkcs11_module.probe("fork")
    assert all(v is True for v in answer["parent_before"].values()), answer
    assert answer["child"]["inherited"] == "fork", answer
    own = answer["child"]["own"]
    if pkcs11_module.kind == "tpm":
        assert own["refused"] == "fork" and "load the module only after forking" in own["message"], own
    else:
        assert own and all(v is True for v in own.values()), own
    assert all(v is True for v in answer["parent_after"].values()), answer


def test_session_limit(pkcs11_module):
    """tpm2-pkcs11 allows 1024 sessions per application; SoftHSM and openCryptoki none we reach with 2000.
    Every device-ca process holds one; at the limit the error says so, and a session closed makes room."""
    answer = pkcs11_module.probe("session-limit")
    if pkcs11_module.kind == "tpm":
        assert answer["limit"] == 1024
        assert answer["refused"]["reason"] == "device" and "session limit is reached" in answer["refused"]["message"]
    else:
        assert answer == {"limit": None, "refused": None}


def test_setting_up_a_module_leaves_this_process_environment_alone(pkcs11_module):
    """The module's settings (TPM2_PKCS11_*, its D-Bus bus) reach the processes that use it through
    Module.env, never through the test process's own environment, which every later test inherits."""
    import os

    for name, value in pkcs11_module.provisioner.module_env().items():
        assert os.environ.get(name) != value, name
