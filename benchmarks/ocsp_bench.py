#!/usr/bin/env python3
"""OCSP POST requests per second for a cached `good` answer: device-ca vs openssl ocsp and cfssl
ocspserve, in the same run (wrk, 4 keep-alive connections, 10 s each, the three interleaved
over --rounds rounds and the best round of each compared), then CRL generation for
10,000 and 100,000 revoked entries vs `openssl ca -gencrl` on the same entries.

device-ca runs as `device-ca serve` (the plain-HTTP listener) with a SoftHSM token and
its own database; the request is a nonce-less OCSP request for one of its certificates.
openssl's responder runs inside a private network namespace (it binds every address);
cfssl serves a response pre-signed with `cfssl ocspsign`.

    python3 benchmarks/ocsp_bench.py [--seconds 10] [--rounds 3] [--skip-crl]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import ocsp_peers  # noqa: E402
from bench_env import temp_softhsm  # noqa: E402


@contextlib.contextmanager
def device_ca_server(work: Path):
    """A running `device-ca serve` with one issued certificate; yields a function that measures it."""
    from cryptography import x509

    from integration.cli_harness import new_ca_env, openssl_csr
    from integration.server_harness import start_server

    env = new_ca_env(work, f"sqlite:///{work / 'device-ca.db'}")
    env.run("init", "--organization", "BuildingCo")
    csr = openssl_csr(work, "lock-1", "/O=BuildingCo/OU=door-lock/CN=lock-1")
    pem = work / "lock-1.pem"
    env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--out", str(pem))
    leaf = x509.load_pem_x509_certificate(pem.read_bytes())
    issuer = x509.load_pem_x509_certificate((env.ca_dir / "issuing.pem").read_bytes())
    request = ocsp_peers.ocsp_request_der(leaf, issuer)
    server = start_server(env, "--rate-limit", "0")
    try:
        status, body = ocsp_peers.post_ocsp(f"{server.http}/ocsp", request)
        assert status == 200 and ocsp_peers.check_response(body, leaf) == "GOOD", (status, body[:20])
        yield lambda seconds: ocsp_peers.wrk_ocsp(f"{server.http}/ocsp", request, seconds=seconds)
    finally:
        server.stop()


def crl_rates(work: Path, sizes=(10_000, 100_000)) -> list[tuple[int, float, float]]:
    """(entries, device-ca seconds, openssl seconds) for signing a CRL with that many entries."""
    from cryptography.hazmat.primitives import hashes, serialization

    from device_ca.ca.crl import RevokedEntry, build_crl
    from helpers import software_ca

    root, _, issuing, issuing_key = software_ca()
    (work / "ca.pem").write_bytes(issuing.public_bytes(serialization.Encoding.PEM))
    (work / "ca.key").write_bytes(issuing_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
    out = []
    for n in sizes:
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        entries = [RevokedEntry(0x0100000000000000000000000000000000 + i, now, "keyCompromise") for i in range(n)]
        start = time.perf_counter()
        build_crl(issuing, issuing_key, entries, 1, now, now + dt.timedelta(days=1), hashes.SHA256())
        ours = time.perf_counter() - start
        index = work / f"index-{n}.txt"
        with index.open("w") as f:
            stamp = now.strftime("%y%m%d%H%M%SZ")
            for e in entries:
                f.write(f"R\t491231235959Z\t{stamp},keyCompromise\t{e.serial:036X}\tunknown\t/CN=x\n")
        conf = work / f"ca-{n}.cnf"
        conf.write_text(f"[ca]\ndefault_ca=d\n[d]\ndatabase={index}\ncrlnumber={work / 'crlnumber'}\n"
                        f"default_md=sha256\ndefault_crl_days=1\ncrl_extensions=e\n[e]\n"
                        "authorityKeyIdentifier=keyid:always\n")
        (work / "crlnumber").write_text("01\n")
        start = time.perf_counter()
        subprocess.run(["openssl", "ca", "-gencrl", "-config", str(conf), "-cert", str(work / "ca.pem"),
                        "-keyfile", str(work / "ca.key"), "-out", str(work / f"openssl-{n}.crl")],
                       check=True, capture_output=True)
        out.append((n, ours, time.perf_counter() - start))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of each is compared")
    parser.add_argument("--skip-crl", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="device-ca-ocsp-bench-"))
    temp_softhsm(work)

    for sub in ("peers", "openssl", "cfssl"):
        (work / sub).mkdir()
    pki = ocsp_peers.make_ocsp_pki(work / "peers")
    request = pki.request_der.read_bytes()
    runs: dict[str, list[dict]] = {"device-ca serve": [], "openssl ocsp -index (peer)": [],
                                   "cfssl ocspserve (peer)": []}
    with device_ca_server(work) as measure_ours:
        for round_ in range(1, args.rounds + 1):       # interleaved: a busy moment hurts every system alike
            runs["device-ca serve"].append(measure_ours(args.seconds))
            runs["openssl ocsp -index (peer)"].append(ocsp_peers.openssl_responder(
                pki.ca_cert, pki.responder_cert, pki.responder_key, pki.leaf_cert, request, seconds=args.seconds,
                workdir=work / "openssl"))
            runs["cfssl ocspserve (peer)"].append(ocsp_peers.cfssl_responder(
                pki.ca_cert, pki.responder_cert, pki.responder_key, pki.leaf_cert, request, seconds=args.seconds,
                workdir=work / "cfssl"))
            print(f"round {round_}: " + "   ".join(f"{name.split()[0]} {r[-1]['rps']:,.0f}/s" for name, r in runs.items()),
                  flush=True)
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    best = {name: max(r, key=lambda x: x["rps"]) for name, r in runs.items()}
    for name, r in best.items():
        print(f"{name:30} {r['rps']:>9,.0f} requests/s   p99 {r['p99_ms']:.1f} ms   non-2xx {r.get('non2xx', 0)}"
              f"   (best of {args.rounds})")
    ours, peer_openssl, peer_cfssl = best.values()
    faster = max(peer_openssl["rps"], peer_cfssl["rps"])
    print(f"ratio device-ca / openssl: {ours['rps'] / peer_openssl['rps']:.2f}   device-ca / cfssl: "
          f"{ours['rps'] / peer_cfssl['rps']:.2f}   (goal: 2x the faster peer, i.e. {2 * faster:,.0f}/s)")
    if not args.skip_crl:
        (work / "crl").mkdir()
        for n, t_ours, t_openssl in crl_rates(work / "crl"):
            print(f"CRL with {n:>7,} entries: device-ca {t_ours:.2f} s   openssl ca -gencrl {t_openssl:.2f} s   "
                  f"ratio {t_ours / t_openssl:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
