#!/usr/bin/env python3
"""Where the issuance pipeline's time goes, stage by stage, next to the crypto floor measured in the
same run through the same Python bindings.

Two shapes of the one pipeline (ra/issuance.py), in one process, SoftHSM P-256 CA key, a database
of its own (SQLite unless --database-url), pre-issuance lint by template (the server default):

- single: RegistrationAuthority.issue, one certificate per call (CLI `issue`; an EST enrollment
  without HTTP and TLS), a group of one: two transactions per certificate;
- bulk: Pipeline.issue on groups of 200 orders (one chunk of `bulk issue`).

Per certificate it prints the wall time of each stage: CSR load and signature check (proof of
possession), the policy's decision, TBS build and lint, the reservation transaction, the token's
signature, its verification, the recording transaction, and the rest (pipeline code). The floor:
SoftHSM ECDSA signature, CSR signature check and certificate signature check, each alone.

    python3 benchmarks/pipeline_profile.py [-n 2000] [--database-url URL]
"""
from __future__ import annotations

import argparse
import collections
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_env import temp_softhsm  # noqa: E402

STAGES = ("csr", "decide", "prepare", "reserve", "sign", "verify", "record")


class Stopwatch:
    def __init__(self):
        self.seconds = collections.Counter()

    def wrap(self, owner, name: str, stage: str) -> None:
        original = getattr(owner, name)
        seconds = self.seconds

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[stage] += time.perf_counter() - start
        setattr(owner, name, timed)


def floor(issuer, csr_der: bytes, certificate, n: int) -> dict[str, float]:
    """µs per operation: the token's signature, a CSR's signature check, a certificate's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    out = {}
    start = time.perf_counter()
    for _ in range(n):
        issuer.signer.sign(b"tbs" * 100, ec.ECDSA(hashes.SHA256()))
    out["SoftHSM ECDSA P-256 sign"] = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n):
        x509.load_der_x509_csr(csr_der).is_signature_valid
    out["CSR load + signature check"] = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n):
        certificate.verify_directly_issued_by(issuer.certificate)
    out["certificate signature check"] = (time.perf_counter() - start) / n * 1e6
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="certificates per shape")
    parser.add_argument("--database-url", help="an EMPTY database (default: SQLite in the temporary directory)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="device-ca-profile-"))
    temp_softhsm(work)
    pin = secrets.token_hex(8)
    os.environ.update({"DEVICE_CA_HOME": str(work / "home"), "DEVICE_CA_HSM_TOKEN": "profile",
                       "DEVICE_CA_HSM_PIN": pin, "DEVICE_CA_POLICY_DIR": str(ROOT / "policies")})
    if args.database_url:
        os.environ["DEVICE_CA_DATABASE_URL"] = args.database_url
    from hsm.softhsm import init_token
    init_token("profile", pin, secrets.token_hex(8))

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from device_ca.ca import csr as csrs
    from device_ca.ca import der, issuer as issuer_module
    from device_ca.ca.authority import CaProfile
    from device_ca.ca.issuer import Issuer
    from device_ca.config import Settings
    from device_ca.ra import authority
    from device_ca.ra.issuance import Order, issued_messages
    from device_ca.services import Services
    from device_ca.store.issuance import IssuanceRepo
    from helpers import make_csr

    services = Services(Settings.load())
    services.admin.init_ca("ec:P-256", CaProfile(organization="BuildingCo"), actor="bench")
    policy = services.policies.get("env-sensor")
    csr_ders = [make_csr(f"env-{i:06x}", ou="env-sensor", encoding=Encoding.DER) for i in range(2 * args.n + 20)]
    ra, issuer = services.ra, services.issuer
    for i in range(10):                                 # warm-up: imports, the template's full lint
        ra.issue("env-sensor", csr_ders[i], actor="bench")

    watch = Stopwatch()
    watch.wrap(csrs, "load", "csr")
    watch.wrap(authority, "decide", "decide")
    watch.wrap(Issuer, "prepare", "prepare")
    watch.wrap(der, "sign", "sign")
    watch.wrap(issuer_module, "verify_signed_by", "verify")
    watch.wrap(IssuanceRepo, "reserve", "reserve")
    watch.wrap(IssuanceRepo, "record", "record")

    results = {}
    start, cpu = time.perf_counter(), time.process_time()
    for der_bytes in csr_ders[10:10 + args.n]:
        ra.issue("env-sensor", der_bytes, actor="bench")
    results["single"] = (time.perf_counter() - start, time.process_time() - cpu, dict(watch.seconds))

    watch.seconds.clear()
    bulk = csr_ders[10 + args.n:10 + 2 * args.n]
    start, cpu = time.perf_counter(), time.process_time()
    for at in range(0, len(bulk), 200):
        orders = []
        for i, der_bytes in enumerate(bulk[at:at + 200]):
            request, device_id = authority.decide(policy, csrs.load(der_bytes), None, "bulk")
            orders.append(Order(request, device_id, policy.name, "bulk", "bench",
                                messages=lambda r: issued_messages(policy, r)))
        ra.pipeline.issue(orders)
    results["bulk"] = (time.perf_counter() - start, time.process_time() - cpu, dict(watch.seconds))

    sample = x509.load_der_x509_certificate(services.store.certificates(limit=1)[0].der)
    crypto = floor(issuer, csr_ders[0], sample, 2000)
    db = services.settings.database_url.split(":", 1)[0]
    print(f"pipeline profile, {args.n} certificates per shape, SoftHSM P-256, {db}; µs per certificate")
    print(f"{'stage':<28}{'single':>10}{'bulk (200)':>12}")
    for stage in STAGES:
        print(f"{stage:<28}" + "".join(f"{results[s][2].get(stage, 0.0) / args.n * 1e6:>{w}.0f}"
                                       for s, w in (("single", 10), ("bulk", 12))))
    for label, index in (("rest (pipeline code)", None), ("total wall", 0), ("total CPU", 1)):
        row = []
        for s in ("single", "bulk"):
            wall, cpu_s, stages = results[s]
            value = wall - sum(stages.values()) if index is None else results[s][index]
            row.append(value / args.n * 1e6)
        print(f"{label:<28}{row[0]:>10.0f}{row[1]:>12.0f}")
    print(f"{'certificates/s (one process)':<28}{args.n / results['single'][0]:>10,.0f}"
          f"{args.n / results['bulk'][0]:>12,.0f}")
    print("crypto floor, same run, same bindings (µs per operation):")
    for name, micros in crypto.items():
        print(f"  {name:<32}{micros:>8.0f}")
    print(f"  {'sum (sign + 2 checks)':<32}{sum(crypto.values()):>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
