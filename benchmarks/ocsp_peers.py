#!/usr/bin/env python3
r"""OCSP responder peers for the device-ca OCSP benchmark: `openssl ocsp` and `cfssl ocspserve`,
and a wrk driver (`wrk_ocsp`) that device-ca's own responder is measured with.

Every measurement is the same: wrk, 4 keep-alive connections (wrk's default; it reconnects when
the server closes), 2 threads, 10 s, `--latency`, each request a POST of ONE pre-encoded OCSP
request (`Content-Type: application/ocsp-request`, SHA-1 CertID, no nonce) for one leaf that
the peer reports `good`. The body comes from a wrk Lua script that reads the DER file once.
Result: requests/s, p99 latency (ms), non-2xx count and wrk socket errors.

openssl ocsp (OpenSSL 3.0):

    openssl ocsp -index index.txt -port P -rsigner responder.pem -rkey responder.key
                 -CA ca.pem -ndays 1 [-multi N]

`index.txt` is the `openssl ca` database: one line per certificate, tab-separated
`V`, expiry `YYMMDDHHMMSSZ`, empty revocation date, serial in upper-case hex (even number of
digits, as BN_bn2hex prints it: this is what the lookup compares), `unknown` (file name), and
the subject as `/O=.../CN=...`. `openssl ocsp -port` listens on `[::]:P` (every address, no
way to choose) and serves one connection at a time, closing each after its one response (HTTP/1.0, no
keep-alive: wrk reconnects for every request). A connection closed without a request wedges it
(REFERENCE.md). So it never runs in the host's network namespace here: `openssl_responder`
writes a small shell script and runs it as `unshare -n sh script` (root). The script:

    ip link set lo up                                   # a new netns has lo down
    openssl ocsp ... 2>responder.log &                  # responder in the background
    wait until responder.log says "waiting for OCSP client connections"
                                                        # NOT a TCP probe: a bare connect + close
                                                        # is exactly what wedges it
    openssl ocsp -issuer ca.pem -cert leaf.pem -url http://127.0.0.1:P/ -CAfile ca.pem
                 -no_nonce                              # one real request: "leaf.pem: good"
    wrk -t2 -c4 -d10s --latency -s post.lua http://127.0.0.1:P/
    kill the responder

wrk must not probe the port either: its default wrk.resolve connects and closes once per address
before the run, which wedges the responder (0 requests in the run); `wrk_script` overrides it.
So the responder and wrk share the private namespace (its own loopback; the host sees no port),
and each run starts a fresh responder (the REFERENCE "restart between runs"). Only the script's
stdout (markers + wrk's output) comes back and is parsed.

cfssl ocspserve (Debian golang-cfssl 1.2.0+git20160825): pre-signed responses only. `cfssl
ocspsign -ca ca.pem -responder responder.pem -responder-key responder.key -cert leaf.pem
-status good -interval 24h` prints JSON `{"ocspResponse": "<base64 DER>"}`. The file that
`cfssl ocspserve -responses FILE` loads (ocsp.NewSourceFromFile) is whitespace-separated base64
DER OCSP responses (one per line here). Responses that do not parse are logged and skipped. The
in-memory source is keyed by serial number ONLY (decimal string), whatever the issuer in the
request. (`cfssl ocspdump -db-config` writes the same format from cfssl's certdb; it needs a
database, so ocspsign is the way without one.) Unknown serials get the 5-byte `unauthorized`
response with HTTP 200. cfssl's responses use responderID byName (not the byKey that RFC 5019
prefers), carry the responder certificate, and have thisUpdate rounded down to the hour and
nextUpdate = thisUpdate + -interval. Checked with this cfssl: a request carrying a nonce gets
the same pre-signed response (nonce not echoed); a SHA-256 CertID is answered too, since the
lookup goes by serial; garbage gets HTTP 400 and malformedRequest (30 03 0a 01 01). The
benchmark request carries no nonce anyway. ocspserve binds `-address 127.0.0.1` and keeps
connections alive; it runs in the host namespace.

Measured here (2 cores, OpenSSL 3.0.19, wrk 4.1.0, EC P-256 responder key, 87-byte request,
4 connections, 10 s; the machine was shared with other sessions, load average 2.7-3.2 during the
runs): openssl ocsp 3,460-4,380 responses/s (p99 2.5-3.8 ms), cfssl ocspserve 3,120-3,640/s (p99
11-12 ms), over three passes. That is 2-3x below REFERENCE.md's figures for the same peers
(7,500-8,900 and 9,000-10,400/s), while wrk against nginx (plain HTTP, keep-alive) reached
34,000/s on the same machine at the same time. Compare peers only within one run of this script.

    python3 benchmarks/ocsp_peers.py [--seconds 10] [--connections 4] [--runs N] [--json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from integration.tls_tools import _write_key, free_port, leaf_builder, make_pki, wait_for_port  # noqa: E402

OCSP_CONTENT_TYPE = "application/ocsp-request"


# --- PKI -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OcspPki:
    ca_cert: Path
    ca_key: Path
    responder_cert: Path     # issued by the CA: EKU OCSPSigning, id-pkix-ocsp-nocheck
    responder_key: Path
    leaf_cert: Path          # the client certificate of make_pki
    request_der: Path        # OCSP request for the leaf (SHA-1 CertID, no nonce)


def _load_cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def issue_responder(ca_cert: x509.Certificate, ca_key, cn: str = "device-ca test OCSP responder",
                    days: int = 2):
    """A delegated OCSP signing certificate (RFC 6960 4.2.2.2): EKU OCSPSigning, ocsp-nocheck."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (leaf_builder(ca_cert, ca_key, cn, key, days)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
            .add_extension(x509.OCSPNoCheck(), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def ocsp_request_der(leaf: x509.Certificate, issuer: x509.Certificate, algorithm=None) -> bytes:
    """A one-certificate OCSP request, no nonce (pre-signed responders can only answer those)."""
    return (ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, algorithm or hashes.SHA1())
            .build().public_bytes(serialization.Encoding.DER))


def make_ocsp_pki(directory: str | os.PathLike) -> OcspPki:
    """make_pki (CA, server, client) plus an OCSP responder certificate and a request for the client."""
    d = Path(directory)
    pki = make_pki(d)
    ca_cert = _load_cert(pki.ca_cert)
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    cert, key = issue_responder(ca_cert, ca_key)
    out = OcspPki(pki.ca_cert, pki.ca_key, d / "responder.pem", d / "responder.key", pki.client_cert,
                  d / "request.der")
    out.responder_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out.responder_key, key)
    out.request_der.write_bytes(ocsp_request_der(_load_cert(pki.client_cert), ca_cert))
    return out


def _serial_hex(serial: int) -> str:
    h = format(serial, "X")
    return ("0" + h) if len(h) % 2 else h


def _openssl_subject(name: x509.Name) -> str:
    """`/O=.../CN=...` in certificate order (what `openssl ca` writes; informational only)."""
    parts = []
    for rdn in name.rdns:
        parts.append("+".join(f"{a.rfc4514_attribute_name}={a.value}" for a in rdn))
    return "".join("/" + p.replace("/", "\\/") for p in parts)


def index_line(cert: x509.Certificate, status: str = "V", revoked_at: dt.datetime | None = None) -> str:
    """One `openssl ca` index.txt line: status, expiry, revocation date, serial, file, subject."""
    expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    revoked = revoked_at.strftime("%y%m%d%H%M%SZ") if status == "R" and revoked_at else ""
    return "\t".join([status, expiry, revoked, _serial_hex(cert.serial_number), "unknown",
                      _openssl_subject(cert.subject)]) + "\n"


def write_index(path: str | os.PathLike, certs) -> Path:
    path = Path(path)
    path.write_text("".join(index_line(c) for c in certs))
    Path(str(path) + ".attr").write_text("unique_subject = no\n")
    return path


# --- wrk -------------------------------------------------------------------------------------

def _lua_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(path: str | os.PathLike, request_file: str | os.PathLike) -> Path:
    """A wrk Lua script that POSTs the DER bytes of `request_file` (read once, at start-up).

    It also replaces wrk.resolve: wrk 4.1's default one (wrk.lua) probes each address with
    wrk.connect(), a TCP connect closed WITHOUT a request, before the run. That alone wedges
    `openssl ocsp -port`: it blocks reading a request from the probe connection (CLOSE-WAIT),
    and the run completes 0 requests. The replacement only looks the address up.
    """
    path = Path(path)
    path.write_text(
        "-- no wrk.connect() probe: a connection closed without a request wedges openssl ocsp\n"
        "function wrk.resolve(host, service)\n"
        "    wrk.addrs = wrk.lookup(host, service)\n"
        "end\n"
        f"local f = assert(io.open({_lua_string(str(Path(request_file).resolve()))}, \"rb\"))\n"
        "wrk.method = \"POST\"\n"
        "wrk.body = f:read(\"*a\")\n"
        "f:close()\n"
        f"wrk.headers[\"Content-Type\"] = \"{OCSP_CONTENT_TYPE}\"\n")
    return path


def wrk_command(url: str, script: str | os.PathLike, seconds: float = 10, connections: int = 4,
                threads: int | None = None) -> list[str]:
    wrk = shutil.which("wrk")
    if not wrk:
        raise FileNotFoundError("wrk not found: run scripts/install-tools.sh")
    threads = threads or max(1, min(connections, os.cpu_count() or 1))
    return [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
            "--latency", "-s", str(script), url]


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _to_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise ValueError(f"unexpected wrk latency {value!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(out: str) -> dict:
    """Requests/s, latency percentiles (ms), totals and errors from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{out}")
    lat = {p: _to_ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.MULTILINE)}
    total = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(rps.group(1)), "p50_ms": lat.get("50"), "p99_ms": lat.get("99"),
            "requests": int(total.group(1)) if total else None,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errs.group(1).strip() if errs else ""}


def wrk_ocsp(url: str, request_der: bytes, seconds: float = 10, connections: int = 4,
             threads: int | None = None) -> dict:
    """POST one pre-encoded OCSP request with wrk for `seconds`: dict(rps, p99_ms, non2xx, ...)."""
    with tempfile.TemporaryDirectory(prefix="wrk-ocsp-") as tmp:
        req = Path(tmp) / "request.der"
        req.write_bytes(request_der)
        script = wrk_script(Path(tmp) / "post.lua", req)
        proc = subprocess.run(wrk_command(url, script, seconds, connections, threads),
                              capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode != 0 or "Requests/sec" not in proc.stdout:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result = parse_wrk(proc.stdout)
    if not result["requests"]:
        raise RuntimeError(f"wrk completed no request against {url}:\n{proc.stdout}")
    return result


def check_response(der: bytes, leaf: x509.Certificate) -> str:
    """Status name of the single response for `leaf` ('GOOD', ...); raises if not successful."""
    resp = ocsp.load_der_ocsp_response(der)
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise RuntimeError(f"OCSP response status {resp.response_status.name}")
    if resp.serial_number != leaf.serial_number:
        raise RuntimeError(f"OCSP response for serial {resp.serial_number:x}, not {leaf.serial_number:x}")
    return resp.certificate_status.name


def post_ocsp(url: str, request_der: bytes, timeout: float = 5) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=request_der, method="POST",
                                 headers={"Content-Type": OCSP_CONTENT_TYPE})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


# --- openssl ocsp in a private network namespace ---------------------------------------------

_NETNS_SCRIPT = r"""
set -u
ip link set lo up || { echo "@@ERROR ip link set lo up failed"; exit 3; }
{openssl} ocsp -index {index} -port {port} -rsigner {rsigner} -rkey {rkey} -CA {ca} -ndays 1 {multi} \
    >{log} 2>&1 </dev/null &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
i=0
until grep -q "waiting for OCSP client connections" {log}; do
    kill -0 $pid 2>/dev/null || { echo "@@ERROR responder exited"; exit 4; }
    i=$((i+1)); [ $i -lt 200 ] || { echo "@@ERROR responder did not start"; exit 5; }
    sleep 0.05
done
echo "@@CHECK"
{openssl} ocsp -issuer {ca} -cert {leaf} -url http://127.0.0.1:{port}/ -CAfile {ca} -no_nonce \
    -timeout 5 2>&1
echo "@@WRK"
{wrk} 2>&1
echo "@@RC $?"
"""


def _require_netns() -> None:
    if os.geteuid() != 0:
        raise PermissionError("openssl_responder needs root for `unshare -n` (a private network namespace)")
    for tool in ("unshare", "ip", "openssl"):
        if not (shutil.which(tool) or os.access(f"/usr/sbin/{tool}", os.X_OK)):
            raise FileNotFoundError(f"{tool} not found (util-linux / iproute2 / openssl)")


def openssl_responder(ca_cert, responder_cert, responder_key, leaf_cert, request_der: bytes | None = None,
                      *, seconds: float = 10, connections: int = 4, port: int = 8888,
                      multi: int | None = None, workdir: str | os.PathLike | None = None) -> dict:
    """Measure `openssl ocsp -index -port` with wrk, both inside one fresh `unshare -n`.

    Returns wrk's figures (rps, p99_ms, non2xx, ...) plus `check` (the status line of one
    `openssl ocsp -url` query made before the load). The responder starts fresh for every call,
    in a network namespace that exists only for this call, so `port` never collides with the host.
    """
    _require_netns()
    ca_cert, responder_cert, responder_key, leaf_cert = map(lambda p: Path(p).resolve(),
                                                            (ca_cert, responder_cert, responder_key, leaf_cert))
    leaf = _load_cert(leaf_cert)
    if request_der is None:
        request_der = ocsp_request_der(leaf, _load_cert(ca_cert))
    with tempfile.TemporaryDirectory(prefix="ocsp-openssl-", dir=workdir) as tmp:
        t = Path(tmp)
        index = write_index(t / "index.txt", [leaf])
        (t / "request.der").write_bytes(request_der)
        script = wrk_script(t / "post.lua", t / "request.der")
        q = lambda p: shlex.quote(str(p))  # noqa: E731
        body = _NETNS_SCRIPT
        for k, v in {"openssl": q(shutil.which("openssl")), "index": q(index), "port": str(port),
                     "rsigner": q(responder_cert), "rkey": q(responder_key), "ca": q(ca_cert),
                     "leaf": q(leaf_cert), "log": q(t / "responder.log"),
                     "multi": f"-multi {int(multi)}" if multi else "",
                     "wrk": " ".join(map(q, wrk_command(f"http://127.0.0.1:{port}/", script, seconds,
                                                        connections)))}.items():
            body = body.replace("{" + k + "}", v)
        (t / "run.sh").write_text(body)
        # Own process group: on a timeout the responder must not survive (a wedged `openssl
        # ocsp` spins at 100% CPU in CLOSE-WAIT); the script's EXIT trap covers the normal path.
        proc = subprocess.Popen(["unshare", "-n", "sh", str(t / "run.sh")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=seconds + 90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        proc.stderr_text = err
        log = (t / "responder.log").read_text(errors="replace") if (t / "responder.log").exists() else ""
    if "@@WRK" not in out or "@@ERROR" in out:
        raise RuntimeError(f"openssl ocsp run failed (exit {proc.returncode}):\n{out}\n{proc.stderr_text}\n"
                           f"--- responder log ---\n{log[-3000:]}")
    check = out.split("@@CHECK", 1)[1].split("@@WRK", 1)[0].strip()
    if f"{leaf_cert}: good" not in check:
        raise RuntimeError(f"openssl ocsp did not answer good for the leaf:\n{check}\n{log[-3000:]}")
    wrk_out = out.split("@@WRK", 1)[1]
    result = parse_wrk(wrk_out)
    if not result["requests"]:
        raise RuntimeError(f"wrk completed no request against openssl ocsp:\n{wrk_out}\n{log[-3000:]}")
    result["check"] = check.splitlines()[-3:]
    return result


# --- cfssl ocspserve -------------------------------------------------------------------------

def cfssl_binary() -> str:
    path = shutil.which("cfssl")
    if not path:
        raise FileNotFoundError("cfssl not found: run scripts/install-tools.sh (Debian golang-cfssl)")
    return path


def cfssl_sign_response(ca_cert, responder_cert, responder_key, leaf_cert, status: str = "good",
                        interval: str = "24h") -> bytes:
    """One pre-signed OCSP response (DER) from `cfssl ocspsign` (it prints {"ocspResponse": b64})."""
    proc = subprocess.run([cfssl_binary(), "ocspsign", "-ca", str(ca_cert), "-responder", str(responder_cert),
                           "-responder-key", str(responder_key), "-cert", str(leaf_cert), "-status", status,
                           "-interval", interval, "-loglevel", "3"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"cfssl ocspsign failed (exit {proc.returncode}):\n{proc.stderr}")
    import base64
    return base64.b64decode(json.loads(proc.stdout)["ocspResponse"])


def write_cfssl_responses(path: str | os.PathLike, responses: list[bytes]) -> Path:
    """The `cfssl ocspserve -responses` file: base64 DER responses, whitespace-separated."""
    import base64
    path = Path(path)
    path.write_text("".join(base64.b64encode(r).decode() + "\n" for r in responses))
    return path


class CfsslOcspServe:
    """`cfssl ocspserve -address 127.0.0.1 -port P -responses FILE` in the foreground."""

    def __init__(self, responses_file, port: int | None = None, loglevel: int = 3):
        self.responses_file = Path(responses_file)
        self.port = port or free_port()
        self.loglevel = loglevel
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([cfssl_binary(), "ocspserve", "-address", "127.0.0.1", "-port", str(self.port),
                                      "-responses", str(self.responses_file), "-loglevel", str(self.loglevel)],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        if not wait_for_port(self.port, timeout=10, alive=lambda: self.proc.poll() is None):
            self.__exit__(None, None, None)
            raise RuntimeError(f"cfssl ocspserve did not start:\n{self.log_text()}")
        return self

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def cfssl_responder(ca_cert, responder_cert, responder_key, leaf_cert, request_der: bytes | None = None,
                    *, seconds: float = 10, connections: int = 4, workdir: str | os.PathLike | None = None) -> dict:
    """Pre-sign a `good` response with cfssl ocspsign, serve it with cfssl ocspserve, measure with wrk."""
    leaf = _load_cert(leaf_cert)
    if request_der is None:
        request_der = ocsp_request_der(leaf, _load_cert(ca_cert))
    with tempfile.TemporaryDirectory(prefix="ocsp-cfssl-", dir=workdir) as tmp:
        der = cfssl_sign_response(ca_cert, responder_cert, responder_key, leaf_cert)
        responses = write_cfssl_responses(Path(tmp) / "responses.b64", [der])
        with CfsslOcspServe(responses) as server:
            status, body = post_ocsp(server.url, request_der)
            if status != 200:
                raise RuntimeError(f"cfssl ocspserve answered HTTP {status}")
            check = check_response(body, leaf)
            if check != "GOOD":
                raise RuntimeError(f"cfssl ocspserve answered {check} for the leaf")
            result = wrk_ocsp(server.url, request_der, seconds=seconds, connections=connections)
            if server.proc.poll() is not None:
                raise RuntimeError(f"cfssl ocspserve died during the run:\n{server.log_text()}")
    result["check"] = check
    return result


# --- main ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--runs", type=int, default=1, help="passes over both peers (fresh responder each)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="ocsp-peers-") as tmp:
        pki = make_ocsp_pki(tmp)
        request = pki.request_der.read_bytes()
        common = (pki.ca_cert, pki.responder_cert, pki.responder_key, pki.leaf_cert, request)
        for _ in range(args.runs):
            rows.append({"peer": "openssl ocsp -index (signs each; unshare -n)",
                         **openssl_responder(*common, seconds=args.seconds, connections=args.connections)})
            rows.append({"peer": "cfssl ocspserve (pre-signed)",
                         **cfssl_responder(*common, seconds=args.seconds, connections=args.connections)})
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if args.json:
        json.dump({"uptime": uptime, "cores": os.cpu_count(), "rows": rows}, sys.stdout, indent=2)
        print()
    else:
        print(f"machine: {os.cpu_count()} cores; uptime: {uptime}")
        print(f"wrk: {args.connections} keep-alive connections, {args.seconds:g} s, one pre-encoded POST "
              f"({len(request)} bytes)")
        for r in rows:
            print(f"  {r['peer']:48} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
                  f"non-2xx {r['non2xx']}  {r['socket_errors'] or ''}")
    return 0 if all(r["rps"] > 0 and r["non2xx"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
