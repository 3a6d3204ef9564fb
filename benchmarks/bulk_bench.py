#!/usr/bin/env python3
"""Bulk issuance: `device-ca bulk issue` (SoftHSM key, real path: CSR check, policy, template
lint, signature, database commit, one PEM file per device) vs `cfssl serve` signing the same
CSRs through its HTTP API with a software key, in the same run; certificates per second for
both, the ratio, and device-ca's peak RSS.

cfssl is driven by wrk (4 connections, 10 s) cycling through the same pre-generated CSRs as
`POST /api/v1/cfssl/sign` bodies; a run with any non-2xx answer fails.

    python3 benchmarks/bulk_bench.py [-n 10000] [--workers 2] [--database-url URL] [--seconds 10]
"""
from __future__ import annotations

import argparse
import base64
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_env import temp_softhsm  # noqa: E402


def make_csrs(n: int) -> list[tuple[str, bytes]]:
    """(device id, DER CSR) for env-sensor devices, P-256 keys."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from helpers import make_csr

    return [(f"env-{i:06x}", make_csr(f"env-{i:06x}", ou="env-sensor", encoding=Encoding.DER)) for i in range(n)]


def device_ca_rate(work: Path, csrs, workers: int | None, database_url: str | None) -> dict:
    from integration.cli_harness import new_ca_env

    env = new_ca_env(work, database_url or f"sqlite:///{work / 'device-ca.db'}")
    env.run("init", "--organization", "BuildingCo")
    batch = work / "batch.jsonl"
    with batch.open("w") as f:
        for device, der in csrs:
            f.write(json.dumps({"device_id": device, "csr": base64.b64encode(der).decode()}) + "\n")
    args = ["bulk", "issue", "--policy", "env-sensor", "--jsonl", str(batch), "--out", str(work / "out"), "--json"]
    if workers:
        args += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "device_ca.cli.main", *args], env=env.env, cwd=env.home,
                          capture_output=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"device-ca bulk issue exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads(proc.stdout)
    if summary["issued"] != len(csrs) or summary["failed"]:
        raise RuntimeError(f"device-ca issued {summary['issued']} of {len(csrs)}: {summary}")
    files = len(list((work / "out").glob("*.pem")))
    if files != len(csrs):
        raise RuntimeError(f"{files} PEM files written for {len(csrs)} certificates")
    return {"certs": summary["issued"], "seconds": summary["seconds"], "rate": summary["issued"] / summary["seconds"],
            "wall": wall, "wall_rate": summary["issued"] / wall,
            "peak_rss_mib": max(peak_kib, before) / 1024 if peak_kib > before else None}


def cfssl_rate(work: Path, csrs, seconds: float) -> dict:
    """cfssl serve with a software P-256 CA key; wrk posts the CSRs round-robin."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import load_der_x509_csr

    import ocsp_peers
    from helpers import software_ca

    _, _, ca, ca_key = software_ca()
    (work / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (work / "ca-key.pem").write_bytes(ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    (work / "config.json").write_text(json.dumps({"signing": {"default": {
        "expiry": "17520h", "usages": ["digital signature", "client auth"]}}}))
    bodies = work / "bodies.txt"
    with bodies.open("w") as f:
        for _, der in csrs[:2000]:
            pem = load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM).decode()
            f.write(json.dumps({"certificate_request": pem}) + "\n")
    script = work / "sign.lua"
    script.write_text(f"""
local bodies = {{}}
for line in io.lines("{bodies}") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/api/v1/cfssl/sign", {{["Content-Type"] = "application/json"}}, bodies[i])
end
""")
    port = ocsp_peers.free_port()
    server = subprocess.Popen(["cfssl", "serve", "-address", "127.0.0.1", "-port", str(port), "-ca",
                               str(work / "ca.pem"), "-ca-key", str(work / "ca-key.pem"), "-config",
                               str(work / "config.json"), "-loglevel", "4"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if not ocsp_peers.wait_for_port(port, timeout=15, alive=lambda: server.poll() is None):
            raise RuntimeError("cfssl serve did not start")
        import urllib.request
        first = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/cfssl/sign", data=bodies.read_text().splitlines()[0].encode(),
            headers={"Content-Type": "application/json"}), timeout=10).read())
        if not first.get("success") or "BEGIN CERTIFICATE" not in first["result"]["certificate"]:
            raise RuntimeError(f"cfssl did not sign: {first}")
        out = subprocess.run(ocsp_peers.wrk_command(f"http://127.0.0.1:{port}/", script, seconds, 4),
                             capture_output=True, text=True, timeout=seconds + 60)
        result = ocsp_peers.parse_wrk(out.stdout)
        if not result["requests"] or result.get("non2xx"):
            raise RuntimeError(f"wrk against cfssl: {out.stdout}\n{out.stderr}")
        return {"rate": result["rps"], "p99_ms": result["p99_ms"]}
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--database-url", help="an EMPTY database (default: SQLite in the temporary directory)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="device-ca-bulk-bench-"))
    temp_softhsm(work)
    (work / "ca").mkdir()
    (work / "cfssl").mkdir()
    started = time.perf_counter()
    csrs = make_csrs(args.n)
    print(f"{args.n:,} P-256 CSRs made in {time.perf_counter() - started:.1f} s", flush=True)
    ours = device_ca_rate(work / "ca", csrs, args.workers, args.database_url)
    peer = cfssl_rate(work / "cfssl", csrs, args.seconds)
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    rss = f"{ours['peak_rss_mib']:.0f} MiB" if ours["peak_rss_mib"] else "n/a"
    print(f"device-ca bulk issue ({(args.database_url or 'sqlite').split(':')[0]}, SoftHSM): {ours['certs']:,} "
          f"certificates in {ours['seconds']:.1f} s = {ours['rate']:,.0f}/s  (command wall time "
          f"{ours['wall']:.1f} s = {ours['wall_rate']:,.0f}/s; peak RSS of the largest process {rss})")
    print(f"cfssl serve /api/v1/cfssl/sign (peer, software key, wrk 4 connections): {peer['rate']:,.0f}/s  "
          f"p99 {peer['p99_ms']:.1f} ms")
    print(f"ratio device-ca / cfssl: {ours['rate'] / peer['rate']:.2f}  (goal: at least 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
