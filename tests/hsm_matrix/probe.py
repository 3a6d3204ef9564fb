"""What the HSM matrix asks of one PKCS#11 module, run in a child process with that module's
environment (tests/hsm_matrix/conftest.py ``Module.probe``). Prints one JSON line.

    python3 probe.py keys | plans | login | wrong-pin | fork
"""
from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import sys

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.x509.oid import NameOID

from hsm import KEY_SPECS, HsmError, Token, TokenConfig, open_token


def config(pin: str | None = None) -> TokenConfig:
    if pin is None:
        with open(os.environ["DEVICE_CA_HSM_PIN_FILE"]) as f:
            pin = f.read().strip()
    return TokenConfig(os.environ["DEVICE_CA_HSM_MODULE"], os.environ["DEVICE_CA_HSM_TOKEN"], pin)


def verified(public, signature: bytes, data: bytes, *args) -> bool:
    try:
        public.verify(signature, data, *args)
        return True
    except InvalidSignature:
        return False


def signatures(key) -> dict[str, bool | str]:
    """Each signature scheme device-ca could use with ``key``: verified by cryptography, or why not made."""
    data = b"device-ca hsm matrix " + secrets.token_bytes(16)
    public = key.public_key()
    schemes = {}
    if isinstance(public, ec.EllipticCurvePublicKey):
        for name, algorithm in (("sha256", hashes.SHA256()), ("sha384", hashes.SHA384())):
            schemes[f"ecdsa-{name}"] = (lambda a=algorithm: key.sign(data, ec.ECDSA(a)),
                                        (ec.ECDSA(algorithm),))
        digest = hashes.Hash(hashes.SHA256())
        digest.update(data)
        schemes["ecdsa-sha256-prehashed"] = (
            lambda d=digest.finalize(): key.sign(d, ec.ECDSA(utils.Prehashed(hashes.SHA256()))),
            (ec.ECDSA(hashes.SHA256()),))
    else:
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        schemes["rsa-pkcs1-sha256"] = (lambda: key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
                                       (padding.PKCS1v15(), hashes.SHA256()))
        schemes["rsa-pkcs1-sha384"] = (lambda: key.sign(data, padding.PKCS1v15(), hashes.SHA384()),
                                       (padding.PKCS1v15(), hashes.SHA384()))
        schemes["rsa-pss-sha256"] = (lambda: key.sign(data, pss, hashes.SHA256()), (pss, hashes.SHA256()))
    result: dict[str, bool | str] = {}
    for name, (make, verify_args) in schemes.items():
        try:
            result[name] = verified(public, make(), data, *verify_args)
        except HsmError as exc:
            result[name] = f"refused: {exc}"
    return result


def certificate_verifies(key) -> bool:
    """A self-signed certificate made by CertificateBuilder with the token key verifies."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsm matrix")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except (InvalidSignature, ValueError):
        return False


def probe_keys() -> dict:
    token = open_token(config())
    run = secrets.token_hex(3)
    out: dict = {"plans": token.plans(), "keys": {}}
    for spec in KEY_SPECS:
        label = f"matrix-{run}-{spec}"
        before = token.labels()
        try:
            key = token.generate_key(label, spec)
        except HsmError as exc:
            out["keys"][spec] = {"made": False, "reason": exc.reason, "error": str(exc),
                                 "unchanged": token.labels() == before}
            continue
        out["keys"][spec] = {"made": True, "attributes": token.describe_key(label),
                             "signatures": signatures(key), "certificate": certificate_verifies(key),
                             "found_again": token.find_key(label) is not None}
    return out


def probe_login() -> dict:
    """Two Tokens (two sessions) on one token in one process: the second C_Login meets
    CKR_USER_ALREADY_LOGGED_IN (the login state is the application's), both sign; closing one keeps
    the other logged in."""
    first, second = open_token(config()), open_token(config())
    label = f"matrix-login-{secrets.token_hex(3)}"
    spec = "ec:P-256" if first.can_generate("ec:P-256") else "rsa:2048"
    first.generate_key(label, spec)
    one, two = first.find_key(label), second.find_key(label)
    both = bool(signatures(one)) and bool(signatures(two))
    first.close()
    after_close = all(v is True for v in signatures(two).values() if not isinstance(v, str))
    second.ping()
    return {"both_signed": both, "second_still_signs": after_close}


def probe_wrong_pin() -> dict:
    with open(os.environ["DEVICE_CA_HSM_PIN_FILE"]) as f:
        right = f.read().strip()
    wrong = ("9" if right[0] != "9" else "8") + right[1:]
    try:
        Token(config(wrong)).open()
        refused = None
    except HsmError as exc:
        refused = {"reason": exc.reason, "message": str(exc), "pin_in_message": wrong in str(exc) or right in str(exc)}
    token = open_token(config(right))  # one wrong attempt must not lock the token
    token.ping()
    return {"refused": refused, "right_pin_works": True}


def probe_fork() -> dict:
    """Open and sign in the parent, fork: the child cannot use the parent's Token (HsmError "fork"),
    opens its own and signs; the parent signs again after the child has gone."""
    token = open_token(config())
    label = f"matrix-fork-{secrets.token_hex(3)}"
    spec = "ec:P-256" if token.can_generate("ec:P-256") else "rsa:2048"
    key = token.generate_key(label, spec)
    parent_before = signatures(key)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        result: dict = {}
        try:
            try:
                key.sign(b"x", ec.ECDSA(hashes.SHA256())) if isinstance(key.public_key(), ec.EllipticCurvePublicKey) \
                    else key.sign(b"x", padding.PKCS1v15(), hashes.SHA256())
                result["inherited"] = "used"
            except HsmError as exc:
                result["inherited"] = exc.reason
            try:
                own = open_token(config())
                result["own"] = signatures(own.find_key(label))
            except HsmError as exc:
                result["own"] = {"refused": exc.reason, "message": str(exc)}
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            result["error"] = f"{type(exc).__name__}: {exc}"
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.waitpid(pid, 0)
    return {"parent_before": parent_before, "child": json.loads(b"".join(chunks)),
            "parent_after": signatures(key)}


def probe_session_limit() -> dict:
    """Open sessions until the token refuses one (tpm2-pkcs11 allows 1024 per application), then open a
    Token: its error names the limit."""
    import pkcs11

    from hsm.library import call_lock, load

    module = os.environ["DEVICE_CA_HSM_MODULE"]
    with call_lock(module):
        lib = load(module).pkcs11          # the instance hsm uses: one C_Initialize per process
    token = lib.get_token(token_label=os.environ["DEVICE_CA_HSM_TOKEN"])
    sessions = []
    limit = None
    while len(sessions) < 2000:
        try:
            sessions.append(token.open())
        except pkcs11.exceptions.SessionCount:
            limit = len(sessions)
            break
    try:
        Token(config()).open()
        refused = None
    except HsmError as exc:
        refused = {"reason": exc.reason, "message": str(exc)}
    for session in sessions[:10]:
        session.close()
    after = Token(config())
    after.open()  # room again
    after.ping()
    return {"limit": limit, "refused": refused}


def probe_wipe() -> dict:
    """Destroy device-ca's key objects (labels device-ca-*): a fresh CA on a token shared by several tests."""
    import pkcs11
    from pkcs11 import Attribute

    lib = pkcs11.lib(os.environ["DEVICE_CA_HSM_MODULE"])
    token = lib.get_token(token_label=os.environ["DEVICE_CA_HSM_TOKEN"])
    destroyed = []
    with token.open(rw=True, user_pin=config().pin) as session:
        for obj in list(session.get_objects()):
            label = obj[Attribute.LABEL]
            if label.startswith("device-ca"):
                obj.destroy()
                destroyed.append(label)
    return {"destroyed": sorted(destroyed)}


if __name__ == "__main__":
    probes = {"keys": probe_keys, "login": probe_login, "wrong-pin": probe_wrong_pin, "fork": probe_fork,
              "wipe": probe_wipe, "session-limit": probe_session_limit}
    print(json.dumps(probes[sys.argv[1]]()))
