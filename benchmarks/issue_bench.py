#!/usr/bin/env python3
"""Single-certificate issuance through the real path vs. the raw signing rate of a PKCS#11 module.

For each module asked for, in the same run:

* the real path, RegistrationAuthority.issue: CSR parse and proof of possession, policy checks,
  pre-issuance pkilint (with the issuer), serial reservation and intent audit (one transaction),
  the signature on the token through hsm (python-pkcs11), TBS and signature checks, then
  certificate, audit and outbox rows (a second transaction);
* the peer figure: how many signatures the module makes per second with the CA's issuing key,
  through python-pkcs11 with nothing else around it (C_Sign in a loop, in a separate process). The
  mechanism and what C_Sign gets come from the key's own ``plan()`` in hsm.keys, i.e. exactly what
  the CA's signatures go through on that module (CKM_ECDSA over a digest made in Python on SoftHSM
  and tpm2-pkcs11; CKM_RSA_PKCS over a DigestInfo made in Python on openCryptoki 3.8, which has
  neither EC nor CKM_SHA256_RSA_PKCS). Its input is the TBSCertificate of the last certificate issued;
  the first signature is verified with the key's public key, so a wrong plan fails loudly.

    python3 benchmarks/issue_bench.py [--module softhsm|opencryptoki|tpm|PATH] [-n N] [--key-type SPEC]
    python3 benchmarks/issue_bench.py --module all          # or --modules softhsm,tpm
    # SoftHSM /usr/lib/softhsm/libsofthsm2.so, openCryptoki /usr/lib/x86_64-linux-gnu/pkcs11/PKCS11_API.so,
    # tpm2-pkcs11 on swtpm /usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so

Each module gets a fresh token from ``hsm.provision.scratch`` in a temporary directory, with its
daemons (pkcsslotd; swtpm, tpm2-abrmd and a private D-Bus) started for the run and stopped after it,
and a SQLite database there (``--database-url``: an EMPTY database instead, one module only). The
CA is made with ``init_ca`` on that token: ec:P-256 where the token can make EC keys, else rsa:3072
(``--key-type`` overrides). openCryptoki's soft token is machine-global: scratch() waits for its
machine lock and refuses when a pkcsslotd it did not start is running; that module is then reported
as failed and the others still run.

Per module it prints the token, the mechanism plan of each signature device-ca makes
(hsm.Token.plans()), the issuance rate with p50/p99 latency, the raw signing rate and their ratio;
then a summary table of all modules (module, CA key type, mechanism, raw signatures/s, issued
certificates/s, ratio). Each timed loop stops after its count or after ``--budget`` seconds, whichever
comes first; the counts default per module (-n / --raw-signatures override them for every module),
so that ``--module all`` takes well under a minute here. swtpm signs a few hundred P-256 digests per
second through tpm2-abrmd; a real TPM is far slower, and the budget keeps the run short there too.
``--lint none`` shows how much of an issuance is pkilint. Exit status 1 when a module failed.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hsm.provision import MODULES, SCRATCH_LOCK, ProvisionError, scratch  # noqa: E402

KINDS = tuple(MODULES)                     # softhsm, opencryptoki, tpm
NAMES = {"softhsm": "SoftHSM", "opencryptoki": "openCryptoki", "tpm": "tpm2-pkcs11/swtpm"}
CERTIFICATES = {"softhsm": 300, "opencryptoki": 300, "tpm": 200}     # -n default per module
RAW_SIGNATURES = {"softhsm": 20000, "opencryptoki": 3000, "tpm": 2000}
TOKEN_LABEL = "bench"
ISSUING_KEY = "device-ca-issuing"

# The raw loop: python-pkcs11 and the plan of hsm.keys, nothing else. argv: module, token label,
# key label, hash name, count, budget (s); stdin: the data to sign (a TBSCertificate); one JSON line out.
RAW = r"""
import json, sys, time
import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hsm import keys
from hsm.config import pin_from_env

module, label, key_label, hash_name = sys.argv[1:5]
count, budget = int(sys.argv[5]), float(sys.argv[6])
data = sys.stdin.buffer.read()
algorithm = getattr(hashes, hash_name.upper())()
token = pkcs11.lib(module).get_token(token_label=label)
mechanisms = frozenset(int(m) for m in token.slot.get_mechanisms())
started = time.perf_counter()
with token.open(user_pin=pin_from_env(), rw=True) as session:
    login = time.perf_counter() - started
    private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=key_label)
    publics = list(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: key_label}))
    source = publics[0] if publics else private
    if private.key_type == KeyType.EC:
        key = keys.Pkcs11EcPrivateKey(None, key_label, keys.ec_public_key(source[Attribute.EC_PARAMS],
                                                                          source[Attribute.EC_POINT]))
        plan = key.plan(ec.ECDSA(algorithm))
    else:
        key = keys.Pkcs11RsaPrivateKey(None, key_label, keys.rsa_public_key(source[Attribute.MODULUS],
                                                                            source[Attribute.PUBLIC_EXPONENT]))
        plan = key.plan(padding.PKCS1v15(), algorithm)
    mechanism, param, payload = plan(mechanisms, data)
    signature = private.sign(payload, mechanism=mechanism, mechanism_param=param)  # warm-up, checked below
    if private.key_type == KeyType.EC:
        half = len(signature) // 2
        r, s = int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        key.public_key().verify(encode_dss_signature(r, s), data, ec.ECDSA(algorithm))
    else:
        key.public_key().verify(signature, data, padding.PKCS1v15(), algorithm)
    sign = private.sign
    done = 0
    start = time.perf_counter()
    deadline = start + budget
    while done < count:
        sign(payload, mechanism=mechanism, mechanism_param=param)
        done += 1
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
given = (f"the {len(data)}-byte TBS, hashed on the token" if payload == data
         else f"a {len(payload)}-byte digest made here")
print(json.dumps({"rate": done / elapsed, "count": done, "seconds": elapsed, "login_seconds": login,
                  "mechanism": keys.mechanism_name(mechanism), "input": given}))
"""


def kind_of(name: str) -> str:
    """softhsm | opencryptoki | tpm for a kind name, a module path (any spelling of the same file) or
    the module's file name."""
    if name in MODULES:
        return name
    real = os.path.realpath(name)
    for kind, path in MODULES.items():
        # a bare file name is shorthand; a path must be that very file (scratch() provisions MODULES only)
        if real == os.path.realpath(path) or name == os.path.basename(path):
            return kind
    raise SystemExit(f"issue_bench: unknown module {name!r}; give one of {', '.join(KINDS)}, 'all', "
                     f"or a path: {', '.join(MODULES.values())}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--module", default="softhsm",
                       help="kind (softhsm, opencryptoki, tpm), module path, or 'all' (default softhsm)")
    which.add_argument("--modules", help="comma-separated kinds or paths, run one after another")
    parser.add_argument("-n", type=int, help="certificates to issue (default per module: "
                        + ", ".join(f"{k} {v}" for k, v in CERTIFICATES.items()) + ")")
    parser.add_argument("--raw-signatures", type=int, help="raw signatures (default per module: "
                        + ", ".join(f"{k} {v}" for k, v in RAW_SIGNATURES.items()) + ")")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds at most for each timed loop (issuance, raw signing); default 20")
    parser.add_argument("--key-type", help="CA key type (default: ec:P-256 where the token can make EC keys, "
                                           "else rsa:3072)")
    parser.add_argument("--database-url", help="an EMPTY database (default: a SQLite file in the temporary "
                                               "directory); one module only")
    parser.add_argument("--lint", choices=["full", "template", "none"], default="full",
                        help="pkilint on every certificate (full), once per shape (template, the server default), "
                             "or not at all (shows its share)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)     # internal: the per-module child process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        return measure(args.measure, args)
    names = args.modules.split(",") if args.modules else [args.module]
    kinds = list(KINDS) if names == ["all"] else [kind_of(name.strip()) for name in names if name.strip()]
    if args.database_url and len(kinds) > 1:
        parser.error("--database-url needs one module (each module needs an empty database)")
    # SIGTERM (timeout(1), a CI runner) unwinds like Ctrl-C, so scratch() still stops the daemons.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = [run_module(kind, args) for kind in kinds]
    print_summary(results)
    return 0 if all("error" not in r for r in results) else 1


# -- the parent: a scratch token per module, the measurement in a child process -----------------------

def run_module(kind: str, args) -> dict:
    """Provision a scratch token of ``kind``, measure in a child process with the module's
    environment (the parent never loads a module), stop the daemons and remove the directory."""
    print(f"== {NAMES[kind]} ({MODULES[kind]})", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f"device-ca-bench-{kind}-"))
    result: dict = {"kind": kind}
    cleaned_up = False               # scratch() stopped the daemons and put openCryptoki's files back
    try:
        waited = kind == "opencryptoki" and lock_busy()
        if waited:
            print(f"waiting for openCryptoki's machine lock {SCRATCH_LOCK} (another run holds the soft token)",
                  flush=True)
        started = time.perf_counter()
        with scratch(kind, work / "token", label=TOKEN_LABEL) as provisioner:
            print(f"scratch token {TOKEN_LABEL!r} ready in {time.perf_counter() - started:.1f} s"
                  + (" (with the wait for the lock)" if waited else ""), flush=True)
            try:
                result.update(measure_in_child(kind, provisioner, work, args))
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                result["error"] = f"{type(exc).__name__}: {exc}"
        cleaned_up = True
    except ProvisionError as exc:
        result["error"] = f"cannot provision a scratch token: {exc}"
    except OSError as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        backup = work / "token" / "swtok-before"    # where scratch() sets openCryptoki's soft token aside
        if cleaned_up or not backup.exists():
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"{kind}: openCryptoki's soft token may not have been put back; its files from before the "
                  f"run are kept in {backup}", flush=True)
    if "error" in result:
        print(f"{kind}: FAILED: {result['error']}", flush=True)
    print(flush=True)
    return result


def measure_in_child(kind: str, provisioner, work: Path, args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVICE_CA_") and k != "SOFTHSM2_CONF"}
    env.update(provisioner.env())
    env.update({"DEVICE_CA_HOME": str(work / "home"), "DEVICE_CA_POLICY_DIR": str(ROOT / "policies"),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    if args.database_url:
        env["DEVICE_CA_DATABASE_URL"] = args.database_url
    out = work / "result.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", kind, "--result", str(out),
               "--budget", str(args.budget), "--lint", args.lint]
    for option, value in (("-n", args.n), ("--raw-signatures", args.raw_signatures), ("--key-type", args.key_type)):
        if value is not None:
            command += [option, str(value)]
    proc = subprocess.run(command, env=env, cwd=ROOT)
    if proc.returncode != 0 or not out.exists():
        return {"error": f"measurement exited {proc.returncode} (see above)"}
    return json.loads(out.read_text())


def lock_busy() -> bool:
    """Whether scratch("opencryptoki") would have to wait (only to say so; scratch takes the lock)."""
    try:
        fd = os.open(SCRATCH_LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def print_summary(results: list[dict]) -> None:
    rows = [("module", "CA key", "mechanism", "raw sig/s", "issued cert/s", "ratio")]
    for r in results:
        if "error" in r:
            rows.append((r["kind"], "-", "-", "-", "-", "FAILED"))
        else:
            rows.append((r["kind"], r["key_type"], r["mechanism"], f"{r['raw_rate']:,.1f}",
                         f"{r['issued_rate']:,.1f}", f"{r['issued_rate'] / r['raw_rate']:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("summary (ratio = issued certificates/s / raw signatures/s)")
    for i, row in enumerate(rows):
        print("  ".join(cell.rjust(w) if 3 <= c <= 5 and i else cell.ljust(w)
                        for c, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for r in results:
        if "error" in r:
            print(f"{r['kind']} FAILED: {r['error']}")


# -- the child: one module, its environment already set --------------------------------------------

def measure(kind: str, args) -> int:
    from cryptography.hazmat.primitives.asymmetric import ec

    from device_ca.ca.authority import CaProfile
    from device_ca.ca.csr import hash_for_key_type
    from device_ca.ca.lint import pkilint_gate
    from device_ca.ca.template_lint import TemplateLinter
    from device_ca.config import Settings
    from device_ca.errors import DeviceCAError
    from device_ca.services import Services
    from tests.helpers import make_csr

    n = args.n or CERTIFICATES[kind]
    raw_count = args.raw_signatures or RAW_SIGNATURES[kind]
    linter = {"full": pkilint_gate, "template": TemplateLinter(pkilint_gate), "none": None}[args.lint]
    services = Services(Settings.load(), linter=linter)
    key_type = args.key_type or ("ec:P-256" if services.token.can_generate("ec:P-256") else "rsa:3072")
    described = services.token.describe()
    info = described["token"]
    print(f"token: {info['library']}; model {info['model']!r}, slot {info['slot']}")
    print("mechanism plans (hsm.Token.plans()):")
    for name, plan in described["plans"].items():
        print(f"  {name}: {plan}")

    started = time.perf_counter()
    try:
        services.admin.init_ca(key_type, CaProfile(organization="BuildingCo"), actor="bench")
    except DeviceCAError as exc:
        print(f"device-ca init --key-type {key_type} refused: {exc}", file=sys.stderr)
        return 1
    print(f"CA key type {key_type}: device-ca init {time.perf_counter() - started:.1f} s", flush=True)
    # A key per device: the RA refuses a key already certified for another device.
    csrs = [make_csr(f"lock-{i}", key=ec.generate_private_key(ec.SECP256R1())) for i in range(n + 10)]
    ra = services.ra
    for i in range(10):                                   # warm-up: imports, pkilint validators, caches
        issued = ra.issue("door-lock", csrs[i], actor="bench")
    latencies = []
    start = time.perf_counter()
    deadline = start + args.budget
    for i in range(10, n + 10):
        t = time.perf_counter()
        issued = ra.issue("door-lock", csrs[i], actor="bench")
        latencies.append(time.perf_counter() - t)
        if t + latencies[-1] > deadline:
            break
    elapsed = time.perf_counter() - start
    issued_rate = len(latencies) / elapsed
    latencies.sort()
    db = services.settings.database_url.split(":", 1)[0]
    print(f"device-ca issue ({db}, lint {args.lint}), {len(latencies)} certificates in {elapsed:.1f} s: "
          f"{issued_rate:,.1f} certificates/s  p50 {statistics.median(latencies) * 1000:.1f} ms  "
          f"p99 {latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000:.1f} ms", flush=True)

    hash_name = hash_for_key_type(key_type).name          # what the issuer signs with: sha256 for both
    proc = subprocess.run([sys.executable, "-c", RAW, services.settings.hsm_module, services.settings.hsm_token,
                           ISSUING_KEY, hash_name, str(raw_count), str(args.budget)],
                          input=issued.certificate.tbs_certificate_bytes, capture_output=True, env=os.environ)
    if proc.returncode != 0:
        print(f"raw signing loop failed:\n{proc.stderr.decode(errors='replace')[-2000:]}", file=sys.stderr)
        return 1
    raw = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    print(f"{NAMES[kind]} raw {key_type} signatures via python-pkcs11 (peer, same run): {raw['rate']:,.1f} "
          f"signatures/s ({raw['count']} in {raw['seconds']:.1f} s; {raw['mechanism']} on {raw['input']}, "
          f"{hash_name.upper().replace('SHA', 'SHA-')}; C_Login {raw['login_seconds'] * 1000:.0f} ms)")
    print(f"ratio device-ca / raw signing: {issued_rate / raw['rate']:.3f}", flush=True)
    if args.result:
        Path(args.result).write_text(json.dumps({
            "kind": kind, "module": services.settings.hsm_module, "key_type": key_type,
            "mechanism": raw["mechanism"], "raw_rate": raw["rate"], "raw_count": raw["count"],
            "issued_rate": issued_rate, "issued": len(latencies),
            "p50_ms": statistics.median(latencies) * 1000, "plans": described["plans"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
