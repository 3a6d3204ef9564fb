"""EST (RFC 7030) against a running `device-ca serve`, driven by curl and checked by openssl.

One server per module (its own token, database and policies); each test uses its own devices.
"""
from __future__ import annotations

import base64
import concurrent.futures
import json
import subprocess
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from integration.cli_harness import new_ca_env, openssl
from integration.est_pki import Manufacturer, device_csr, pkcs7_certificates
from integration.server_harness import policy_dir_with

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BR_SAN = "URI:urn:dev:org:32473-{}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory, module_database_url, module_serve):
    tmp = tmp_path_factory.mktemp("est")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    acme, other = Manufacturer(tmp, "Acme"), Manufacturer(tmp, "Other")
    policies = policy_dir_with(tmp, {
        "factory-lock": f'subject = "CN={{device_id}},OU=factory-lock,O=BuildingCo"\n'
                        f'enrollment = ["idevid"]\nmanufacturer_cas = ["{acme.pem}"]\n',
        "other-lock": f'subject = "CN={{device_id}},OU=other-lock,O=BuildingCo"\n'
                      f'enrollment = ["idevid"]\nmanufacturer_cas = ["{other.pem}"]\n',
        "guarded-lock": 'subject = "CN={device_id},OU=guarded-lock,O=BuildingCo"\nrequire_approval = true\n',
        "quick-rotate": 'subject = "CN={device_id},OU=quick-rotate,O=BuildingCo"\nrotation_grace = "1s"\n',
        "key-lock": 'subject = "CN={device_id},OU=key-lock,O=BuildingCo"\n'
                    'enrollment = ["bootstrap-token", "admin", "bulk"]\n',
        "factory-replace": f'subject = "CN={{device_id}},OU=factory-replace,O=BuildingCo"\n'
                           f'enrollment = ["idevid"]\nmanufacturer_cas = ["{acme.pem}"]\nidevid_reenroll = "replace"\n',
    })
    server = module_serve(env, "--rate-limit", "0", policy_dir=policies)
    return {"env": env, "server": server, "tmp": tmp, "acme": acme, "other": other}


def _token(env, policy, device):
    return env.run("token", "create", "--policy", policy, "--device-id", device).stdout.decode().strip()


def _enroll(pki, policy, device, *, san=None, key=None, extra=()):
    key, body = device_csr(pki["tmp"], f"{device}-{time.monotonic_ns()}", f"/O=BuildingCo/OU={policy}/CN={device}",
                           san=san, key=key)
    return key, body, pki["server"].curl(f"/{policy}/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                        *extra, body=body)


def _certificates(env, device):
    return json.loads(env.run("list", "--device-id", device, "--json").stdout)


def test_cacerts_and_csrattrs(pki):
    status, body, headers = pki["server"].curl("/cacerts")
    assert status == 200 and headers["content-type"].startswith("application/pkcs7-mime")
    certs = pkcs7_certificates(body)
    assert [c.subject.rfc4514_string() for c in certs] == ["CN=BuildingCo Device Issuing CA,O=BuildingCo",
                                                           "CN=BuildingCo Root CA,O=BuildingCo"]
    status, body, headers = pki["server"].curl("/door-lock/csrattrs")
    assert status == 200 and headers["content-type"] == "application/csrattrs"
    parsed = subprocess.run(["openssl", "asn1parse", "-inform", "DER"], input=base64.b64decode(body),
                            capture_output=True).stdout.decode()
    assert "prime256v1" in parsed and "secp384r1" in parsed and "ecdsa-with-SHA256" in parsed


def test_bootstrap_token_enrollment_then_replay_refused(pki, tmp_path):
    env, server = pki["env"], pki["server"]
    secret = _token(env, "badge-reader", "br-7")
    key, body, (status, data, headers) = _enroll(pki, "badge-reader", "br-7", extra=("-u", f"br-7:{secret}"))
    assert status == 200, data
    assert headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
    (cert,) = pkcs7_certificates(data)
    pem = tmp_path / "br-7.pem"
    pem.write_bytes(cert.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                                 fromlist=["Encoding"]).Encoding.PEM))
    verify = openssl("verify", "-CAfile", str(env.ca_dir / "root.pem"), "-untrusted", str(env.ca_dir / "issuing.pem"),
                     str(pem))
    assert verify.returncode == 0, verify.stderr
    assert cert.subject.rfc4514_string() == "CN=br-7,OU=badge-reader,O=BuildingCo"
    status, data, _ = server.curl("/badge-reader/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                  "-u", f"br-7:{secret}", body=body)
    assert status == 401 and b"already used" in data
    assert len(_certificates(env, "br-7")) == 1


def test_ten_racing_requests_with_one_token_get_one_certificate(pki):
    env = pki["env"]
    secret = _token(env, "badge-reader", "br-10")
    _, body = device_csr(pki["tmp"], "br-10", "/O=BuildingCo/OU=badge-reader/CN=br-10")

    def attempt(_):
        status, _, headers = pki["server"].curl("/badge-reader/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                                "-u", f"br-10:{secret}", body=body)
        return status, headers.get("retry-after")

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = sorted(pool.map(attempt, range(10)), key=lambda a: a[0])
    # one certificate; a request arriving while the winner's claim is in flight is told to come back
    # (202 + Retry-After: the winner's outcome decides), any later one that the token is used
    assert [a[0] for a in answers].count(200) == 1
    assert all(a[0] == 401 or a == (202, "60") for a in answers if a[0] != 200), answers
    assert len(_certificates(env, "br-10")) == 1
    assert attempt(None) == (401, None)         # coming back after the race: used


def test_reenroll_renews_and_supersedes_after_grace(pki, tmp_path):
    env, server = pki["env"], pki["server"]
    secret = _token(env, "quick-rotate", "qr-1")
    key, _, (status, data, _) = _enroll(pki, "quick-rotate", "qr-1", extra=("-u", f"qr-1:{secret}"))
    assert status == 200
    current = tmp_path / "current.pem"
    current.write_text(subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"],
                                      input=base64.b64decode(data), capture_output=True).stdout.decode())
    _, body = device_csr(tmp_path, "renew", "/O=BuildingCo/OU=quick-rotate/CN=qr-1", key=key)
    status, data, _ = server.curl("/quick-rotate/simplereenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(current), "--key", str(key), body=body)
    assert status == 200, data
    (renewed,) = pkcs7_certificates(data)
    listed = _certificates(env, "qr-1")
    assert [c["status"] for c in listed] == ["good", "good"]
    time.sleep(1.5)
    out = env.run("revoke-superseded").stdout.decode()
    assert "revoked 1 superseded" in out
    by_serial = {c["serial"]: c for c in _certificates(env, "qr-1")}
    assert by_serial[format(renewed.serial_number, "036x")]["status"] == "good"
    assert [c["revocation_reason"] for c in by_serial.values() if c["status"] == "revoked"] == ["superseded"]
    # the superseded (now revoked) certificate can no longer re-enroll
    status, data, _ = server.curl("/quick-rotate/simplereenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(current), "--key", str(key), body=body)
    assert status == 403 and b"revoked" in data


def test_renewal_stays_linear(pki, tmp_path):
    """Attack (issue 14, item 7): a certificate that was already renewed, still good within its
    grace period, tries to renew again with simplereenroll and with serverkeygen: 403 and nothing
    issued. serverkeygen with the newest certificate renews it like simplereenroll (superseded,
    revoked after the grace)."""
    env, server = pki["env"], pki["server"]
    secret = _token(env, "quick-rotate", "qr-2")
    key, _, (status, data, _) = _enroll(pki, "quick-rotate", "qr-2", extra=("-u", f"qr-2:{secret}"))
    assert status == 200
    first = tmp_path / "first.pem"
    first.write_bytes(pkcs7_certificates(data)[0].public_bytes(Encoding.PEM))
    _, body = device_csr(tmp_path, "renew-2", "/O=BuildingCo/OU=quick-rotate/CN=qr-2", key=key)
    status, data, _ = server.curl("/quick-rotate/simplereenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(first), "--key", str(key), body=body)
    assert status == 200, data
    second = pkcs7_certificates(data)[0]
    for operation in ("simplereenroll", "serverkeygen"):        # the old one, still good, tries again
        status, data, _ = server.curl(f"/quick-rotate/{operation}", "-H", "Content-Type: application/pkcs10",
                                      "--cert", str(first), "--key", str(key), body=body)
        assert status == 403 and b"already renewed" in data, (operation, status, data)
    assert [c["status"] for c in _certificates(env, "qr-2")] == ["good", "good"]

    current = tmp_path / "second.pem"
    current.write_bytes(second.public_bytes(Encoding.PEM))
    status, data, headers = server.curl("/quick-rotate/serverkeygen", "-H", "Content-Type: application/pkcs10",
                                        "--cert", str(current), "--key", str(key), body=body)
    assert status == 200, data
    shown = json.loads(env.run("show", format(second.serial_number, "x"), "--json").stdout)
    assert shown["superseded_by"]                                # linked like a re-enrollment
    time.sleep(1.5)
    env.run("revoke-superseded")
    statuses = sorted(c["status"] for c in _certificates(env, "qr-2"))
    assert statuses == ["good", "revoked", "revoked"]            # one device, one good certificate


def test_reenroll_with_different_subject_or_foreign_cert_is_refused(pki, tmp_path):
    env, server = pki["env"], pki["server"]
    secret = _token(env, "badge-reader", "br-20")
    san = BR_SAN.format("br-20")
    key, _, (status, data, _) = _enroll(pki, "badge-reader", "br-20", extra=("-u", f"br-20:{secret}"))
    current = tmp_path / "c.pem"
    current.write_text(subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"],
                                      input=base64.b64decode(data), capture_output=True).stdout.decode())
    _, other_subject = device_csr(tmp_path, "x", "/O=BuildingCo/OU=badge-reader/CN=br-21", san=BR_SAN.format("br-21"),
                                  key=key)
    status, data, _ = server.curl("/badge-reader/simplereenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(current), "--key", str(key), body=other_subject)
    assert status == 403 and b"subject differs" in data
    _, same = device_csr(tmp_path, "y", "/O=BuildingCo/OU=badge-reader/CN=br-20", san=san, key=key)
    status, data, _ = server.curl("/badge-reader/simplereenroll", "-H", "Content-Type: application/pkcs10", body=same)
    assert status == 401 and b"current certificate" in data
    # a certificate from a factory CA the server trusts at TLS level is not ours: 401
    idevid, idkey = pki["acme"].idevid("br-20")
    status, data, _ = server.curl("/badge-reader/simplereenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(idevid), "--key", str(idkey), body=same)
    assert status == 401 and b"not issued by this CA" in data
    assert len(_certificates(env, "br-20")) == 1


def test_idevid_enrollment(pki, tmp_path):
    env, server = pki["env"], pki["server"]
    idevid, idkey = pki["acme"].idevid("fl-1")
    _, body = device_csr(tmp_path, "fl-1", "/O=BuildingCo/OU=factory-lock/CN=fl-1")
    status, data, _ = server.curl("/factory-lock/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(idevid), "--key", str(idkey), body=body)
    assert status == 200, data
    assert pkcs7_certificates(data)[0].subject.rfc4514_string() == "CN=fl-1,OU=factory-lock,O=BuildingCo"
    # an IDevID from a manufacturer that this policy does not trust
    foreign, fkey = pki["other"].idevid("fl-2")
    _, body = device_csr(tmp_path, "fl-2", "/O=BuildingCo/OU=factory-lock/CN=fl-2")
    status, data, _ = server.curl("/factory-lock/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(foreign), "--key", str(fkey), body=body)
    assert status == 401 and b"manufacturer" in data
    # an IDevID naming another device
    _, body = device_csr(tmp_path, "fl-3", "/O=BuildingCo/OU=factory-lock/CN=fl-3")
    status, data, _ = server.curl("/factory-lock/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(idevid), "--key", str(idkey), body=body)
    assert status == 403 and b"does not name device fl-3" in data
    assert _certificates(env, "fl-2") == [] and _certificates(env, "fl-3") == []


def test_an_idevid_enrolls_its_device_once(pki, tmp_path):
    """Attack (issue 14, item 8): the same factory certificate enrolls its device again, with a key
    of the caller's choosing: 403 while the device holds a current certificate. A policy with
    idevid_reenroll = "replace" supersedes the current certificate instead (audited as a replacement)."""
    env, server = pki["env"], pki["server"]
    for policy, device in (("factory-lock", "fl-8"), ("factory-replace", "fr-8")):
        idevid, idkey = pki["acme"].idevid(device)
        answers = []
        for attempt in range(2):
            _, body = device_csr(tmp_path, f"{device}-{attempt}", f"/O=BuildingCo/OU={policy}/CN={device}")
            answers.append(server.curl(f"/{policy}/simpleenroll", "-H", "Content-Type: application/pkcs10",
                                       "--cert", str(idevid), "--key", str(idkey), body=body))
        assert answers[0][0] == 200, answers[0]
        listed = _certificates(env, device)
        if policy == "factory-lock":
            assert answers[1][0] == 403 and b"already has a valid certificate" in answers[1][1], answers[1]
            assert len(listed) == 1 and listed[0]["status"] == "good"
        else:
            assert answers[1][0] == 200, answers[1]
            first = pkcs7_certificates(answers[0][1])[0]
            shown = json.loads(env.run("show", format(first.serial_number, "x"), "--json").stdout)
            assert shown["superseded_by"] == format(pkcs7_certificates(answers[1][1])[0].serial_number, "036x")
    assert json.loads(env.run("audit", "verify", "--json").stdout)["ok"]


def test_a_compromised_key_stays_dead(pki, tmp_path):
    """Attack (issue 14, item 9): a key certified for one device is asked for by another (403); after
    `revoke --reason keyCompromise`, the other good certificate with that key (the one the renewal
    superseded, still in its grace) is revoked too, and the key is refused on every path: EST
    enrollment (403), CLI issue (exit 4), bulk issue (the item fails)."""
    env, server = pki["env"], pki["server"]

    def enroll(device, key=None):
        secret = _token(env, "key-lock", device)
        return _enroll(pki, "key-lock", device, key=key, extra=("-u", f"{device}:{secret}"))

    key, _, (status, data, _) = enroll("lock-50")
    assert status == 200, data
    first = tmp_path / "lock-50.pem"
    first.write_bytes(pkcs7_certificates(data)[0].public_bytes(Encoding.PEM))
    _, _, (status, data, _) = enroll("lock-51", key=key)             # another device, the same key
    assert status == 403 and b"already certified for another device" in data, data
    _, body = device_csr(tmp_path, "lock-50-renew", "/O=BuildingCo/OU=key-lock/CN=lock-50", key=key)
    status, data, _ = server.curl("/key-lock/simplereenroll", "-H", "Content-Type: application/pkcs10",
                                  "--cert", str(first), "--key", str(key), body=body)
    assert status == 200, data
    renewed = format(pkcs7_certificates(data)[0].serial_number, "x")
    env.run("revoke", renewed, "--reason", "keyCompromise")
    listed = _certificates(env, "lock-50")
    assert [(c["status"], c["revocation_reason"]) for c in listed] == [("revoked", "keyCompromise")] * 2
    blocked = json.loads(env.run("keys", "blocked", "--json").stdout)
    assert [b["revoked_serial"] for b in blocked] == [format(int(renewed, 16), "036x")]

    _, _, (status, data, _) = enroll("lock-52", key=key)
    assert status == 403 and b"blocked" in data, data
    _, body = device_csr(tmp_path, "lock-53", "/O=BuildingCo/OU=key-lock/CN=lock-53", key=key)
    csr_file = tmp_path / "lock-53.der"
    refused = env.run("issue", "--policy", "key-lock", "--csr", str(csr_file), check=False)
    assert refused.returncode == 4 and b"blocked" in refused.stderr, refused.stderr
    batch = tmp_path / "blocked.jsonl"
    batch.write_text(json.dumps({"device_id": "lock-54", "csr": base64.b64encode(csr_file.read_bytes()).decode()}))
    bulk = env.run("bulk", "issue", "--policy", "key-lock", "--jsonl", str(batch), "--out", str(tmp_path / "b"),
                   "--json", check=False)
    assert bulk.returncode == 4 and json.loads(bulk.stdout)["failed"] == 1
    for device in ("lock-51", "lock-52", "lock-53", "lock-54"):
        assert _certificates(env, device) == []
    assert json.loads(env.run("audit", "verify", "--json").stdout)["ok"]


def test_approval_flow(pki, tmp_path):
    env, server = pki["env"], pki["server"]
    secret = _token(env, "guarded-lock", "gl-1")
    _, body = device_csr(tmp_path, "gl-1", "/O=BuildingCo/OU=guarded-lock/CN=gl-1")
    args = ("-H", "Content-Type: application/pkcs10", "-u", f"gl-1:{secret}")
    status, data, headers = server.curl("/guarded-lock/simpleenroll", *args, body=body)
    assert status == 202 and headers["retry-after"] == "60"
    assert server.curl("/guarded-lock/simpleenroll", *args, body=body)[0] == 202
    pending = json.loads(env.run("pending", "list", "--json").stdout)
    request = next(p for p in pending if p["device_id"] == "gl-1")
    env.run("pending", "approve", request["id"])
    status, data, _ = server.curl("/guarded-lock/simpleenroll", *args, body=body)
    assert status == 200 and len(pkcs7_certificates(data)) == 1
    assert len(_certificates(env, "gl-1")) == 1
    assert json.loads(env.run("pending", "list", "--all", "--json").stdout)[-1]["state"] == "issued"


def test_serverkeygen(pki, tmp_path):
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    from device_ca.web.est_codec import parse_multipart_mixed

    env, server = pki["env"], pki["server"]
    secret = _token(env, "env-sensor", "env-00ff")
    _, body = device_csr(tmp_path, "env", "/O=BuildingCo/OU=env-sensor/CN=env-00ff")
    status, data, headers = server.curl("/env-sensor/serverkeygen", "-H", "Content-Type: application/pkcs10",
                                        "-u", f"env-00ff:{secret}", body=body)
    assert status == 200 and headers["content-type"].startswith("multipart/mixed")
    (key_headers, key_der), (cert_headers, cert_der) = parse_multipart_mixed(data, headers["content-type"])
    assert key_headers["content-type"] == "application/pkcs8"
    key = load_der_private_key(key_der, None)
    cert = pkcs7_certificates(base64.b64encode(cert_der))[0]
    assert cert.public_key() == key.public_key()


@pytest.mark.parametrize("case", ["no credentials", "wrong token", "wrong content type", "not base64", "not a CSR",
                                  "bad signature", "outside policy", "unknown label", "wrong method", "10 MB"])
def test_bad_requests(pki, tmp_path, case):
    env, server = pki["env"], pki["server"]
    device = f"br-{abs(hash(case)) % 10**6}"
    secret = _token(env, "badge-reader", device)
    _, good = device_csr(tmp_path, "d", f"/O=BuildingCo/OU=badge-reader/CN={device}")
    ct, auth, path, body, method = "application/pkcs10", ("-u", f"{device}:{secret}"), "/badge-reader/simpleenroll", good, ()
    if case == "no credentials":
        auth = ()
    elif case == "wrong token":
        auth = ("-u", f"{device}:not-the-secret")
    elif case == "wrong content type":
        ct = "text/plain"
    elif case == "not base64":
        body = b"%%% not base64 %%%"
    elif case == "not a CSR":
        body = base64.encodebytes(b"\x30\x03\x02\x01\x05")
    elif case == "bad signature":
        der = bytearray(base64.b64decode(good))
        der[-3] ^= 1
        body = base64.encodebytes(bytes(der))
    elif case == "outside policy":
        _, body = device_csr(tmp_path, "o", f"/O=EvilCo/OU=badge-reader/CN={device}")
    elif case == "unknown label":
        path = "/toaster/simpleenroll"
    elif case == "wrong method":
        method, body = ("-X", "GET"), None
    elif case == "10 MB":
        body = b"A" * (10 * 1024 * 1024)
    status, data, headers = server.curl(path, "-H", f"Content-Type: {ct}", *auth, *method, body=body)
    expected = {"no credentials": 401, "wrong token": 401, "wrong content type": 415, "not base64": 400,
                "not a CSR": 400, "bad signature": 400, "outside policy": 403, "unknown label": 404,
                "wrong method": 405, "10 MB": 413}[case]
    assert status == expected, data
    assert headers["content-type"].startswith("text/plain") and data.count(b"\n") == 1
    if status == 401:
        assert headers["www-authenticate"].startswith("Basic")
    assert _certificates(env, device) == []


def test_serverkeygen_also_waits_for_approval(pki, tmp_path):
    env, server = pki["env"], pki["server"]
    secret = env.run("token", "create", "--policy", "guarded-lock", "--device-id", "gl-2").stdout.decode().strip()
    _, body = device_csr(tmp_path, "gl-2", "/O=BuildingCo/OU=guarded-lock/CN=gl-2")
    status, _, headers = server.curl("/guarded-lock/serverkeygen", "-H", "Content-Type: application/pkcs10",
                                     "-u", f"gl-2:{secret}", body=body)
    assert status == 202 and headers["retry-after"] == "60"
    assert _certificates(env, "gl-2") == []
