"""A device whose private key never leaves its TPM (issue 20, part 4), against a running `device-ca serve`.

The device has its own TPM 2.0 simulator (swtpm) behind a resource manager (tpm2-abrmd on a private
D-Bus bus: on real hardware the kernel's /dev/tpmrm0). Its key is generated inside the TPM by the
OpenSSL 3 provider `tpm2` (a TSS2 PRIVATE KEY file: the key wrapped by the TPM, useless without it);
openssl makes the CSR with it; curl enrolls with the bootstrap token (a curl config file: the secret is
never on a command line); `openssl s_client` re-enrolls with the TPM key as TLS client key (curl 7.88
cannot use a provider key). docs/tpm-device.md gives the same commands for a user to paste.

Two differences from a software key that these tests pin down:
- tpm2-openssl before 1.3 (Debian 12: 1.1.1) writes the CSR's signatureAlgorithm with a NULL parameter
  (RFC 5758 §3.2: MUST be omitted); device-ca refuses it. examples/tpm-device/csr-omit-null.sh rewrites
  that unsigned field on the device, without the key.
- Without a resource manager the TPM's 3 object slots run out in a TLS 1.3 handshake.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from asn1crypto import csr as asn1_csr
from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from integration.cli_harness import ROOT, new_ca_env, openssl
from integration.est_pki import pkcs7_certificates
from integration.swtpm import APT, Swtpm
from integration.tls_tools import estclient

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.hsm_matrix]

OMIT_NULL = ROOT / "examples" / "tpm-device" / "csr-omit-null.sh"
PROVIDERS = ("-provider", "tpm2", "-provider", "default")
POLICY = "badge-reader"                     # shipped policy: ec:P-256, a SAN, bootstrap tokens


def _require_tools() -> None:
    missing = Swtpm.missing_tools() + [t for t in ("curl", "sh") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: {APT} curl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory, module_database_url, module_serve):
    _require_tools()
    tmp = tmp_path_factory.mktemp("tpm-pki")
    env = new_ca_env(tmp, module_database_url)
    env.run("init", "--organization", "BuildingCo")
    server = module_serve(env, "--rate-limit", "0")
    return {"env": env, "server": server}


@pytest.fixture(scope="module")
def tpm(tmp_path_factory):
    """The device's TPM, behind tpm2-abrmd: stopped (all three processes) after the module."""
    _require_tools()
    device_tpm = Swtpm()
    try:
        yield device_tpm.start(tmp_path_factory.mktemp("device-tpm") / "state", resource_manager=True)
    finally:
        device_tpm.stop()


@pytest.fixture
def fresh_tpm(tmp_path):
    """Another machine's TPM (new seeds), direct swtpm TCTI; stopped after the test."""
    other = Swtpm()
    try:
        yield other.start(tmp_path / "other-tpm")
    finally:
        other.stop()


class Device:
    """The device's side: openssl with the tpm2 provider on ``tpm``, curl, openssl s_client."""

    def __init__(self, tpm: Swtpm, server, directory: Path, device_id: str):
        self.tpm, self.server, self.dir, self.id = tpm, server, directory, device_id
        self.env = {**os.environ, **tpm.env}
        shutil.copy(server.chain, directory / "chain.pem")

    def openssl(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["openssl", *args], env=self.env, cwd=self.dir, input=input, capture_output=True,
                              timeout=60)

    def genkey(self, name: str, *pkeyopts: str) -> Path:
        path = self.dir / f"{name}.tss2.pem"
        opts = pkeyopts or ("group:P-256",)
        proc = self.openssl("genpkey", *PROVIDERS, "-algorithm", "RSA" if opts[0].startswith("bits") else "EC",
                            *[a for o in opts for a in ("-pkeyopt", o)], "-out", str(path))
        assert proc.returncode == 0, proc.stderr
        return path

    def public_key(self, key: Path) -> bytes:
        """The TPM key's public key (SubjectPublicKeyInfo DER), read through the TPM."""
        proc = self.openssl("pkey", *PROVIDERS, "-in", str(key), "-pubout", "-outform", "DER")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def csr(self, key: Path, name: str, policy: str = POLICY) -> tuple[Path, Path]:
        """(the CSR as tpm2-openssl wrote it, the one csr-omit-null.sh made of it), both DER."""
        raw, fixed = self.dir / f"{name}.tpm.csr.der", self.dir / f"{name}.csr.der"
        proc = self.openssl("req", "-new", *PROVIDERS, "-key", str(key),
                            "-subj", f"/O=BuildingCo/OU={policy}/CN={self.id}",
                            "-addext", f"subjectAltName=URI:urn:dev:org:32473-{self.id}", "-outform", "DER",
                            "-out", str(raw))
        assert proc.returncode == 0, proc.stderr
        fix = subprocess.run(["sh", str(OMIT_NULL), str(raw), str(fixed)], cwd=self.dir, capture_output=True,
                             timeout=30)
        assert fix.returncode == 0, fix.stderr
        return raw, fixed

    def enroll(self, csr: Path, secret: str, policy: str = POLICY) -> tuple[int, bytes, dict]:
        """curl POSTs the base64 CSR with the bootstrap token from a config file (mode 0600)."""
        auth = self.dir / "auth.curlrc"
        fd = os.open(auth, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, f'user = "{self.id}:{secret}"\n'.encode())
        os.close(fd)
        try:
            return self.server.curl(f"/{policy}/simpleenroll", "-K", str(auth),
                                    "-H", "Content-Type: application/pkcs10",
                                    body=base64.encodebytes(csr.read_bytes()))
        finally:
            auth.unlink()

    def reenroll(self, cert: Path, key: Path, csr: Path, policy: str = POLICY) -> tuple[int, bytes, dict, bytes]:
        """openssl s_client with the TPM key as TLS client key, a raw HTTP/1.1 POST on its stdin:
        (status, body, headers, s_client's stderr); status 0 if no HTTP answer came."""
        return self.post(self.server.port, self.dir / "chain.pem", f"/.well-known/est/{policy}/simplereenroll",
                         "application/pkcs10", base64.encodebytes(csr.read_bytes()), cert, key)

    def post(self, port: int, ca_file: Path, path: str, content_type: str, body: bytes, cert: Path,
             key: Path) -> tuple[int, bytes, dict, bytes]:
        """An HTTP/1.1 POST written to openssl s_client's stdin, the TPM key as TLS client key."""
        request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        proc = self.openssl("s_client", *PROVIDERS, "-cert", str(cert), "-key", str(key),
                            "-CAfile", str(ca_file), "-verify_return_error", "-verify_ip", "127.0.0.1",
                            "-connect", f"127.0.0.1:{port}", "-quiet", input=request)
        return (*_http_response(proc.stdout), proc.stderr)

    def save(self, body: bytes, name: str) -> tuple[Path, x509.Certificate]:
        (cert,) = pkcs7_certificates(body)
        path = self.dir / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path, cert

    def verify(self, cert: Path) -> None:
        proc = openssl("verify", "-CAfile", str(self.dir / "chain.pem"), str(cert))
        assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


def _http_response(raw: bytes) -> tuple[int, bytes, dict]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 "):
        return 0, raw, {}
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), body, headers


def _token(env, device_id: str, policy: str = POLICY) -> str:
    return env.run("token", "create", "--policy", policy, "--device-id", device_id).stdout.decode().strip()


def _certificates(env, device_id: str) -> list[dict]:
    return json.loads(env.run("list", "--device-id", device_id, "--json").stdout)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _enrolled(pki, tpm, tmp_path, device_id: str) -> tuple[Device, Path, Path]:
    """A device enrolled with a TPM key and the bootstrap token: (device, its key, its certificate)."""
    device = Device(tpm, pki["server"], tmp_path, device_id)
    key = device.genkey("device")
    _, csr = device.csr(key, "enroll")
    status, body, _ = device.enroll(csr, _token(pki["env"], device_id))
    assert status == 200, body
    cert, _ = device.save(body, "device")
    return device, key, cert


def test_tpm_key_enrolls_with_curl_then_renews_and_rekeys_with_s_client(pki, tpm, tmp_path):
    env = pki["env"]
    device = Device(tpm, pki["server"], tmp_path, "br-401")
    started = time.monotonic()
    key = device.genkey("device")
    # the file is the TPM's wrapping of the key: no software key, no private key without the TPM
    assert key.read_text().startswith("-----BEGIN TSS2 PRIVATE KEY-----")
    software = openssl("pkey", "-in", str(key), "-noout")
    assert software.returncode != 0 and "No supported data to decode" in software.stderr
    tpm_public = device.public_key(key)

    raw, csr = device.csr(key, "enroll")
    # tpm2-openssl 1.1.1's CSR: ecdsa-with-SHA256 with NULL parameters, refused (nothing issued, token kept)
    assert "NULL" in openssl("asn1parse", "-inform", "DER", "-in", str(raw)).stdout
    secret = _token(env, "br-401")
    status, body, _ = device.enroll(raw, secret)
    assert status == 400 and b"not a PKCS#10 certificate request" in body, (status, body)
    assert _certificates(env, "br-401") == []
    # the rewritten CSR: same signed content, same signature, the algorithm identifier without NULL
    assert "NULL" not in openssl("asn1parse", "-inform", "DER", "-in", str(csr)).stdout
    assert _cri(raw) == _cri(csr) and _signature(raw) == _signature(csr)
    assert "verify OK" in openssl("req", "-inform", "DER", "-in", str(csr), "-verify", "-noout").stderr

    status, body, headers = device.enroll(csr, secret)
    assert status == 200, body
    assert headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
    first_path, first = device.save(body, "device")
    assert _spki(first) == tpm_public                     # the certificate is for the key in the TPM
    assert first.subject.rfc4514_string() == "CN=br-401,OU=badge-reader,O=BuildingCo"
    device.verify(first_path)
    enrolled = time.monotonic()

    # renewal: TLS client authentication with the TPM key, a new CSR from the same TPM key
    _, renew_csr = device.csr(key, "renew")
    status, body, headers, stderr = device.reenroll(first_path, key, renew_csr)
    assert status == 200, (status, body, stderr)
    assert headers["content-transfer-encoding"] == "base64"
    second_path, second = device.save(body, "renewed")
    assert second.serial_number != first.serial_number and _spki(second) == tpm_public
    device.verify(second_path)
    listed = {c["serial"]: c for c in _certificates(env, "br-401")}
    assert [c["status"] for c in listed.values()] == ["good", "good"]

    # rekey: the current certificate and its TPM key authenticate, the CSR is signed by a new TPM key
    new_key = device.genkey("device-2")
    new_public = device.public_key(new_key)
    assert new_public != tpm_public
    _, rekey_csr = device.csr(new_key, "rekey")
    status, body, _, stderr = device.reenroll(second_path, key, rekey_csr)
    assert status == 200, (status, body, stderr)
    third_path, third = device.save(body, "rekeyed")
    assert _spki(third) == new_public
    device.verify(third_path)
    # and the new certificate works with the new TPM key: renewing once more succeeds
    _, again = device.csr(new_key, "again")
    status, body, _, stderr = device.reenroll(third_path, new_key, again)
    assert status == 200, (status, body, stderr)
    assert _spki(device.save(body, "again")[1]) == new_public
    shown = json.loads(env.run("show", format(second.serial_number, "x"), "--json").stdout)
    assert shown["superseded_by"] == format(third.serial_number, "036x")
    assert len(_certificates(env, "br-401")) == 4
    print(f"\nTPM device: key + CSR + enroll {enrolled - started:.2f}s, "
          f"3 re-enrollments {time.monotonic() - enrolled:.2f}s")


def _doc_commands() -> str:
    """The ```sh blocks of docs/tpm-device.md, in order."""
    text = (ROOT / "docs" / "tpm-device.md").read_text()
    blocks = re.findall(r"^```sh\n(.*?)^```$", text, flags=re.M | re.S)
    assert len(blocks) >= 5, "docs/tpm-device.md lost its sh blocks"
    return "\n".join(blocks)


def test_the_documented_commands_work(pki, tpm, tmp_path):
    """docs/tpm-device.md's device-side commands, pasted as they are into a POSIX sh: key in the TPM,
    CSR, enrollment with curl and the token, renewal and rekey with openssl s_client."""
    env, server = pki["env"], pki["server"]
    shutil.copy(server.chain, tmp_path / "chain.pem")
    shutil.copy(OMIT_NULL, tmp_path / "csr-omit-null.sh")
    fd = os.open(tmp_path / "bootstrap.token", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, _token(env, "br-406").encode() + b"\n")
    os.close(fd)
    script = tmp_path / "device.sh"
    script.write_text(_doc_commands())
    device_env = {**os.environ, **tpm.env, "DEVICE": "br-406", "POLICY": POLICY, "CA_HOST": "127.0.0.1",
                  "CA_PORT": str(server.port), "CHECK_NAME": "-verify_ip 127.0.0.1",
                  "EST": f"https://127.0.0.1:{server.port}/.well-known/est"}
    proc = subprocess.run(["sh", "-eu", str(script)], cwd=tmp_path, env=device_env, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert not (tmp_path / "bootstrap.token").exists() and not (tmp_path / "auth.curlrc").exists()
    listed = _certificates(env, "br-406")
    assert [c["status"] for c in listed] == ["good", "good", "good"]
    current = x509.load_pem_x509_certificate((tmp_path / "device.pem").read_bytes())
    assert _spki(current) == Device(tpm, server, tmp_path, "br-406").public_key(tmp_path / "device.tss2.pem")
    assert format(current.serial_number, "036x") in {c["serial"] for c in listed}
    assert (tmp_path / "device.tss2.pem").read_text().startswith("-----BEGIN TSS2 PRIVATE KEY-----")


def test_a_csr_for_a_key_the_sender_does_not_hold_is_refused(pki, tpm, tmp_path):
    """Proof of possession over the real transport: the device (its certificate and TPM key in TLS)
    sends a CSR naming another TPM's public key, signed with its own TPM key: 400, nothing issued."""
    env = pki["env"]
    device, key, cert = _enrolled(pki, tpm, tmp_path, "br-402")
    victim = device.genkey("victim")                     # any public key the attacker can read
    victim_public = device.public_key(victim)
    _, own_csr = device.csr(key, "own")
    forged = tmp_path / "forged.csr.der"
    forged.write_bytes(_with_public_key(own_csr.read_bytes(), victim_public))
    # (openssl req -verify exits 0 either way: its message tells)
    assert "verify failure" in openssl("req", "-inform", "DER", "-in", str(forged), "-verify", "-noout").stderr
    before = _certificates(env, "br-402")
    status, body, _, stderr = device.reenroll(cert, key, forged)
    assert status == 400 and b"proof of possession failed" in body, (status, body, stderr)
    assert _certificates(env, "br-402") == before and len(before) == 1

    # someone with the device's certificate but another TPM key: the client cannot even present it
    status, body, _, stderr = device.reenroll(cert, victim, own_csr)
    assert status == 0 and b"key values mismatch" in stderr, (status, body, stderr)
    assert _certificates(env, "br-402") == before


def test_a_copied_key_file_is_useless_on_another_tpm(pki, tpm, fresh_tpm, tmp_path):
    """The TSS2 key file copied to a machine with another TPM: it neither signs a CSR nor
    authenticates TLS there; nothing reaches the CA, nothing is issued."""
    env = pki["env"]
    (tmp_path / "device").mkdir()
    device, key, cert = _enrolled(pki, tpm, tmp_path / "device", "br-403")
    stolen_dir = tmp_path / "elsewhere"
    stolen_dir.mkdir()
    thief = Device(fresh_tpm, pki["server"], stolen_dir, "br-403")
    stolen_key, stolen_cert = stolen_dir / "device.tss2.pem", stolen_dir / "device.pem"
    shutil.copy(key, stolen_key)
    shutil.copy(cert, stolen_cert)
    csr = thief.openssl("req", "-new", *PROVIDERS, "-key", str(stolen_key), "-subj",
                        "/O=BuildingCo/OU=badge-reader/CN=br-403", "-outform", "DER", "-out", "stolen.csr.der")
    assert csr.returncode != 0 and not (stolen_dir / "stolen.csr.der").exists()
    # the other TPM refuses to load the blob: TPM_RC_INTEGRITY (0x1df, `tpm2_rc_decode 0x1df`), its
    # parent, derived from that TPM's own seed, cannot unwrap it
    assert b"Esys_Load" in csr.stderr and b"0x000001df" in csr.stderr, csr.stderr
    # with a CSR made elsewhere (here: by the real device), TLS with the copied key still fails
    _, good_csr = device.csr(key, "for-thief")
    shutil.copy(good_csr, stolen_dir / "good.csr.der")
    status, body, _, stderr = thief.reenroll(stolen_cert, stolen_key, stolen_dir / "good.csr.der")
    assert status == 0 and body == b"" and b"0x000001df" in stderr, (status, body, stderr)
    assert len(_certificates(env, "br-403")) == 1
    # and the real device, with its TPM, still can
    status, body, _, stderr = device.reenroll(cert, key, good_csr)
    assert status == 200, (status, body, stderr)


def test_without_a_resource_manager_tls_runs_out_of_tpm_object_slots(pki, fresh_tpm, tmp_path):
    """Why the device's TPM is behind tpm2-abrmd (/dev/tpmrm0 on hardware): with the direct swtpm TCTI
    the key and the CSR work, but the TLS 1.3 handshake needs more loaded objects than the TPM's 3
    (the key, and the tpm2 provider's SHA-256 hash sequences, which TLS copies)."""
    env = pki["env"]
    assert fresh_tpm.tcti.startswith("swtpm:")
    device = Device(fresh_tpm, pki["server"], tmp_path, "br-404")
    key = device.genkey("device")
    _, csr = device.csr(key, "enroll")
    status, body, _ = device.enroll(csr, _token(env, "br-404"))
    assert status == 200, body
    cert, _ = device.save(body, "device")
    status, body, _, stderr = device.reenroll(cert, key, csr)
    assert status == 0 and b"out of memory for object contexts" in stderr, (status, body, stderr)
    assert len(_certificates(env, "br-404")) == 1


def test_p384_tpm_key_and_software_fallback_pitfall(pki, tpm, tmp_path):
    """door-lock allows ec:P-384: a P-384 TPM key enrolls. An algorithm the TPM does not have
    (Ed25519) is silently generated by the default provider as a software key: check the file."""
    env = pki["env"]
    device = Device(tpm, pki["server"], tmp_path, "lock-405")
    key = device.genkey("device", "group:P-384")
    assert key.read_text().startswith("-----BEGIN TSS2 PRIVATE KEY-----")
    _, csr = device.csr(key, "enroll", policy="door-lock")
    status, body, _ = device.enroll(csr, _token(env, "lock-405", "door-lock"), policy="door-lock")
    assert status == 200, body
    path, cert = device.save(body, "device")
    assert _spki(cert) == device.public_key(key) and cert.public_key().curve.name == "secp384r1"
    device.verify(path)
    software = tmp_path / "ed25519.pem"
    proc = device.openssl("genpkey", *PROVIDERS, "-algorithm", "ED25519", "-out", str(software))
    assert proc.returncode == 0 and software.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def _cri(der_path: Path) -> bytes:
    return asn1_csr.CertificationRequest.load(der_path.read_bytes())["certification_request_info"].dump()


def _signature(der_path: Path) -> bytes:
    return asn1_csr.CertificationRequest.load(der_path.read_bytes())["signature"].native


def _with_public_key(csr_der: bytes, spki_der: bytes) -> bytes:
    """The CSR with its subjectPKInfo replaced and its signature (over the old content) kept."""
    request = asn1_csr.CertificationRequest.load(csr_der)
    info = asn1_csr.CertificationRequestInfo.load(request["certification_request_info"].dump())
    info["subject_pk_info"] = asn1_keys.PublicKeyInfo.load(spki_der)
    return asn1_csr.CertificationRequest({"certification_request_info": info,
                                          "signature_algorithm": request["signature_algorithm"],
                                          "signature": request["signature"]}).dump(force=True)


@pytest.fixture
def go_tpm(tmp_path):
    """A TPM on a unix socket (go-tpm talks to a device file or a unix socket only); stopped after the test."""
    tpm = Swtpm()
    try:
        yield tpm.start(tmp_path / "go-tpm", unix_socket=True)
    finally:
        tpm.stop()


def test_go_estclient_enrolls_and_reenrolls_with_a_tpm_key(pki, go_tpm, tmp_path):
    """globalsign/est's estclient with its own TPM key support ("private_key": {"tpm": ...}, go-tpm):
    a key made by tpm2-tools under a persistent storage key, CSR and TLS signatures by the TPM.
    Its Go CSR has no NULL in the algorithm identifier: no rewrite needed."""
    env, server = pki["env"], pki["server"]
    if shutil.which("estclient") is None and not os.access("/usr/local/bin/estclient", os.X_OK):
        pytest.fail("estclient missing: scripts/install-tools.sh (go install github.com/globalsign/est/cmd/estclient)")
    tools = {**os.environ, **go_tpm.env}

    def tpm2(*args: str) -> None:
        proc = subprocess.run(list(args), env=tools, cwd=tmp_path, capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr

    # the storage key persistent at 0x81000001 (the direct TCTI keeps transient objects: flush them),
    # the signing key as TPM2B public/private blobs wrapped by it
    tpm2("tpm2_createprimary", "-Q", "-C", "o", "-G", "ecc", "-c", "primary.ctx")
    tpm2("tpm2_evictcontrol", "-Q", "-C", "o", "-c", "primary.ctx", "0x81000001")
    tpm2("tpm2_flushcontext", "-t")
    tpm2("tpm2_create", "-Q", "-C", "0x81000001", "-G", "ecc256:ecdsa-sha256", "-u", "key.pub", "-r", "key.priv")
    tpm2("tpm2_flushcontext", "-t")
    # the public key as the TPM made it (tpm2_print), to compare with the certificates
    tpm_public = serialization.load_pem_public_key(subprocess.run(
        ["tpm2_print", "-t", "TPM2B_PUBLIC", "-f", "pem", "key.pub"], cwd=tmp_path, capture_output=True,
        check=True).stdout)
    # go-tpm's Load adds the 2-byte size itself: it takes the TPMT_PUBLIC / private area without it
    tpm2("sh", "-c", "tail -c +3 key.pub > key.tpmt.pub; tail -c +3 key.priv > key.area.priv")
    assert (tmp_path / "key.tpmt.pub").read_bytes() == (tmp_path / "key.pub").read_bytes()[2:]
    tpm_key = {"tpm": {"device": str(go_tpm.socket_path), "storage_handle": 0x81000001,
                       "public_area": str(tmp_path / "key.tpmt.pub"),
                       "private_area": str(tmp_path / "key.area.priv")}}

    def config(name: str, **extra) -> Path:
        path = tmp_path / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, json.dumps({"private_key": tpm_key, **extra}).encode())
        os.close(fd)
        return path

    base = ["-server", f"127.0.0.1:{server.port}", "-explicit", str(server.chain), "-aps", POLICY]
    device_id = "br-407"
    enroll_config = config("enroll.json", username=device_id, password=_token(env, device_id))
    first = tmp_path / "first.pem"
    out = estclient("enroll", *base, "-config", enroll_config, "-cn", device_id, "-ou", POLICY, "-org", "BuildingCo",
                    "-uris", f"urn:dev:org:32473-{device_id}", "-out", first)
    assert out.returncode == 0, out.stderr
    cert = x509.load_pem_x509_certificate(first.read_bytes())
    assert cert.public_key() == tpm_public and cert.subject.rfc4514_string() == "CN=br-407,OU=badge-reader,O=BuildingCo"
    assert openssl("verify", "-CAfile", str(server.chain), str(first)).returncode == 0
    # re-enrollment: TLS client authentication signed by the TPM through go-tpm
    renewed = tmp_path / "renewed.pem"
    out = estclient("reenroll", *base, "-config", config("reenroll.json"), "-certs", first, "-out", renewed)
    assert out.returncode == 0, out.stderr
    second = x509.load_pem_x509_certificate(renewed.read_bytes())
    assert second.public_key() == tpm_public and second.serial_number != cert.serial_number
    assert openssl("verify", "-CAfile", str(server.chain), str(renewed)).returncode == 0
    assert [c["status"] for c in _certificates(env, device_id)] == ["good", "good"]


# -- Keycloak: a token for the TPM key ---------------------------------------------------------------

@pytest.fixture(scope="module")
def kc_ca(tmp_path_factory):
    """A CA and database of its own for the Keycloak test (its serve runs the Keycloak outbox drainer)."""
    from conftest import fresh_database

    tmp = tmp_path_factory.mktemp("tpm-kc-ca")
    with fresh_database(tmp) as url:
        env = new_ca_env(tmp, url, home_name="kc-home")
        env.run("init", "--organization", "BuildingCo")
        yield env


@pytest.fixture(scope="module")
def kc(kc_ca, tmp_path_factory):
    from integration.keycloak_harness import new_keycloak

    keycloak = new_keycloak(tmp_path_factory.mktemp("tpm-kc-state"))
    try:
        keycloak.start(truststore=kc_ca.ca_dir / "trust.pem", fresh=True)
        kc_ca.extra.update(keycloak.device_env(kc_ca.home))
        kc_ca.run("keycloak", "init-realm")
        yield keycloak
    finally:
        keycloak.stop()


@pytest.mark.keycloak
@pytest.mark.database           # kc_ca's database is the backend under test (fresh_database)
def test_a_tpm_key_gets_a_certificate_bound_keycloak_token(kc_ca, kc, serve, tpm, tmp_path):
    """The device enrolled with its TPM key asks Keycloak for a token with nothing but that
    certificate and key (client_credentials over mutual TLS, s_client with the tpm2 provider): the
    token is bound to the certificate (RFC 8705 cnf x5t#S256)."""
    import hashlib

    from integration.keycloak_harness import jwt_claims, wait_for

    server = serve(kc_ca)
    device = Device(tpm, server, tmp_path, "br-408")
    key = device.genkey("device")
    _, csr = device.csr(key, "enroll")
    status, body, _ = device.enroll(csr, _token(kc_ca, "br-408"))
    assert status == 200, body
    cert_path, cert = device.save(body, "device")
    admin = kc.admin()
    wait_for(lambda: admin.find_client("smart-building", "br-408"), 60, what="the Keycloak client of br-408")

    token_path = "/realms/smart-building/protocol/openid-connect/token"
    form = b"grant_type=client_credentials&client_id=br-408"
    status, body, _, stderr = device.post(kc.https_port, kc.server_cert, token_path,
                                          "application/x-www-form-urlencoded", form, cert_path, key)
    assert status == 200, (status, body, stderr)
    answer = json.loads(body)
    claims = jwt_claims(answer["access_token"])
    thumbprint = base64.urlsafe_b64encode(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())
    assert claims["cnf"]["x5t#S256"] == thumbprint.rstrip(b"=").decode()
    assert claims["azp"] == "br-408" and claims["cert_serial"] == format(cert.serial_number, "036x")
    # the same request without the TPM key (no client certificate): no token
    request = (f"POST {token_path} HTTP/1.1\r\nHost: 127.0.0.1:{kc.https_port}\r\n"
               "Content-Type: application/x-www-form-urlencoded\r\n"
               f"Content-Length: {len(form)}\r\nConnection: close\r\n\r\n").encode() + form
    bare = openssl_input("s_client", "-CAfile", str(kc.server_cert), "-verify_return_error",
                         "-connect", f"127.0.0.1:{kc.https_port}", "-quiet", input=request)
    status, body, _ = _http_response(bare.stdout)
    assert status == 401 and b"access_token" not in body, (status, body)


def openssl_input(*args: str, input: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=60)
