#!/usr/bin/env python3
"""Single-certificate issuance through the real path vs. the raw SoftHSM signing rate.

The real path is RegistrationAuthority.issue: CSR parse and proof of possession, policy checks,
pre-issuance pkilint (with the issuer), serial reservation and intent audit (one transaction),
the SoftHSM signature through python-pkcs11, TBS and signature checks, then certificate, audit
and outbox rows (a second transaction). The peer figure, measured in the same run, is how many
P-256 digests SoftHSM signs per second through python-pkcs11 with nothing else around it.

    python3 benchmarks/issue_bench.py [-n 300] [--database-url URL]

It makes its own SoftHSM token directory and database under a temporary directory.
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_env import temp_softhsm  # noqa: E402

RAW = r"""
import hashlib, os, sys, time
import pkcs11
from pkcs11 import Mechanism, ObjectClass
lib = pkcs11.lib(sys.argv[1])
token = lib.get_token(token_label=sys.argv[2])
with token.open(user_pin=os.environ["BENCH_PIN"], rw=True) as session:
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="device-ca-issuing")
    digest = hashlib.sha256(b"x").digest()
    n = int(sys.argv[3]); start = time.perf_counter()
    for _ in range(n):
        key.sign(digest, mechanism=Mechanism.ECDSA)
    print(n / (time.perf_counter() - start))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="certificates to issue")
    parser.add_argument("--raw-signatures", type=int, default=20000)
    parser.add_argument("--database-url", help="an EMPTY database (default: a SQLite file in the temporary directory)")
    parser.add_argument("--lint", choices=["full", "template", "none"], default="full",
                        help="pkilint on every certificate (full), once per shape (template, the server default), "
                             "or not at all (shows its share)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="device-ca-bench-"))
    temp_softhsm(work)
    pin = secrets.token_hex(8)
    os.environ.update({"DEVICE_CA_HOME": str(work / "home"), "DEVICE_CA_HSM_TOKEN": "bench",
                       "DEVICE_CA_HSM_PIN": pin, "DEVICE_CA_POLICY_DIR": str(ROOT / "policies"), "BENCH_PIN": pin})
    if args.database_url:
        os.environ["DEVICE_CA_DATABASE_URL"] = args.database_url
    from hsm.softhsm import init_token
    init_token("bench", pin, secrets.token_hex(8))

    from cryptography.hazmat.primitives.asymmetric import ec

    from device_ca.ca.authority import CaProfile
    from device_ca.config import Settings
    from device_ca.ca.template_lint import TemplateLinter
    from device_ca.ca.lint import pkilint_gate
    from device_ca.services import Services
    from tests.helpers import make_csr

    linter = {"full": pkilint_gate, "template": TemplateLinter(pkilint_gate), "none": None}[args.lint]
    services = Services(Settings.load(), linter=linter)
    services.admin.init_ca("ec:P-256", CaProfile(organization="BuildingCo"), actor="bench")
    key = ec.generate_private_key(ec.SECP256R1())
    csrs = [make_csr(f"lock-{i}", key=key) for i in range(args.n + 10)]
    ra = services.ra
    for i in range(10):                                   # warm-up: imports, pkilint validators, caches
        ra.issue("door-lock", csrs[i], actor="bench")
    latencies = []
    start = time.perf_counter()
    for i in range(10, args.n + 10):
        t = time.perf_counter()
        ra.issue("door-lock", csrs[i], actor="bench")
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    issued_rate = args.n / elapsed

    raw = subprocess.run([sys.executable, "-c", RAW, services.settings.hsm_module, "bench", str(args.raw_signatures)],
                         capture_output=True, text=True, env=os.environ, check=True)
    raw_rate = float(raw.stdout.strip())
    latencies.sort()
    db = services.settings.database_url.split(":", 1)[0]
    print(f"device-ca issue ({db}, lint {args.lint}), {args.n} certificates: "
          f"{issued_rate:,.0f} certificates/s  p50 {statistics.median(latencies) * 1000:.1f} ms  "
          f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms")
    print(f"SoftHSM raw P-256 signatures via python-pkcs11 (peer, same run): {raw_rate:,.0f} signatures/s")
    print(f"ratio device-ca / raw signing: {issued_rate / raw_rate:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
