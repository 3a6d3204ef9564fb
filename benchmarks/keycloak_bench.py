"""Keycloak sync against its ceiling: ``device-ca keycloak sync`` of N new devices into a fresh realm,
and in the same run the same N client creations made directly with the Admin API.

    python3 benchmarks/keycloak_bench.py [-n 1000] [--concurrency 8]

Starts its own Keycloak 26.7.3 (scripts/keycloak.sh, free loopback ports, a state directory of its
own, stopped at the end), a CA on a temporary SoftHSM token and N env-sensor certificates issued
through the real path. After a warm-up, it times (1) N POST /clients with the representations
device-ca builds, by --concurrency threads, into realm "direct", then (2) the sync into realm
"fleet": plan (store + one listing), create, read back, settle the outbox. Goal: sync within
1.5x of the direct calls.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_env import temp_softhsm  # noqa: E402

POLICY = """
subject = "CN={device_id},OU=env-sensor,O=BuildingCo"
device_id_pattern = "env-[0-9a-f]{4,16}"
enrollment = ["admin"]
[keycloak]
realm = "fleet"
default_client_scopes = ["env-sensor"]
access_token_lifespan = "10m"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keycloak_env(state: Path, ports: tuple[int, int, int], password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KC_", "KEYCLOAK_"))}
    env.update({"KEYCLOAK_STATE": str(state), "KEYCLOAK_HTTP_PORT": str(ports[0]),
                "KEYCLOAK_HTTPS_PORT": str(ports[1]), "KEYCLOAK_MANAGEMENT_PORT": str(ports[2]),
                "KC_BOOTSTRAP_ADMIN_USERNAME": "admin", "KC_BOOTSTRAP_ADMIN_PASSWORD": password})
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="keycloak-bench-"))
    temp_softhsm(work)
    password = secrets.token_urlsafe(18)
    state = work / "keycloak"
    ports = (free_port(), free_port(), free_port())
    kc_env = keycloak_env(state, ports, password)
    try:
        return run(args, work, state, ports, password, kc_env)
    finally:
        subprocess.run([str(ROOT / "scripts" / "keycloak.sh"), "stop"], env=kc_env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, state: Path, ports, password: str, kc_env: dict[str, str]) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    from device_ca.ca.authority import CaProfile
    from device_ca.config import Settings
    from device_ca.keycloak import AdminClient, Credentials
    from device_ca.keycloak.representation import DesiredClient
    from device_ca.services import Services
    from hsm.softhsm import init_token

    pin = secrets.token_hex(8)
    init_token("bench", pin, secrets.token_hex(8))
    policies = work / "policies"
    policies.mkdir()
    (policies / "sensor.toml").write_text(POLICY)
    (work / "kc-password").write_text(password)
    os.environ.update({"DEVICE_CA_HSM_PIN": pin, "DEVICE_CA_KEYCLOAK_PASSWORD_FILE": str(work / "kc-password")})
    settings = Settings.load({"DEVICE_CA_HOME": str(work / "home"), "DEVICE_CA_HSM_TOKEN": "bench",
                              "DEVICE_CA_POLICY_DIR": str(policies),
                              "DEVICE_CA_KEYCLOAK_URL": f"http://127.0.0.1:{ports[0]}",
                              "DEVICE_CA_KEYCLOAK_USERNAME": "admin",
                              "DEVICE_CA_KEYCLOAK_CONCURRENCY": str(args.concurrency)})
    services = Services(settings)
    services.admin.init_ca("ec:P-256", CaProfile(organization="Bench"), "bench")
    chain = services.admin.export_ca_files()["chain.pem"]

    print(f"issuing {args.n} certificates ...", flush=True)
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    started = time.perf_counter()
    for i in range(args.n):
        request = csr.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        services.ra.issue("sensor", request.public_bytes(Encoding.DER), device_id=f"env-{i:06x}", actor="bench")
    print(f"  {args.n} issued in {time.perf_counter() - started:.1f} s", flush=True)

    print("starting Keycloak ...", flush=True)
    subprocess.run([str(ROOT / "scripts" / "keycloak.sh"), "start"], check=True, capture_output=True,
                   env={**kc_env, "KEYCLOAK_TRUSTSTORE": str(chain), "KEYCLOAK_FRESH": "1"})
    admin = AdminClient(f"http://127.0.0.1:{ports[0]}", Credentials(username="admin", password=password))
    for realm in ("warmup", "direct", "fleet"):
        admin.create_realm(realm)
    for realm in ("warmup", "direct"):
        admin.create_client_scope(realm, "env-sensor")

    anchor = services.ca_certificates()["root"]
    mapping = services.policies.get("sensor").keycloak
    records = services.store.certificates(policy="sensor")

    def representations(realm: str):
        import dataclasses

        m = dataclasses.replace(mapping, realm=realm)
        return [DesiredClient.for_certificate(m, r.device_id, x509.load_der_x509_certificate(r.der), anchor, r.serial, r.policy)
                .representation() for r in records]

    def create_all(realm: str, bodies) -> float:
        begin = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda body: admin.create_client(realm, body), bodies))
        return time.perf_counter() - begin

    create_all("warmup", representations("warmup")[:args.warmup])
    direct = create_all("direct", representations("direct"))
    print(f"direct Admin API: {args.n} client creations in {direct:.2f} s ({args.n / direct:.0f}/s, "
          f"concurrency {args.concurrency})", flush=True)

    begin = time.perf_counter()
    report = services.keycloak.sync()
    synced = time.perf_counter() - begin
    assert not report.failures, report.failures[:3]
    assert report.count("create") == args.n, report.count("create")
    assert services.store.queue.pending("keycloak.") == []
    print(f"device-ca sync:   {args.n} new devices in {synced:.2f} s ({args.n / synced:.0f}/s; plan, create, "
          f"read back, settle {args.n} outbox rows)", flush=True)
    print(f"ratio sync/direct: {synced / direct:.2f}x (goal <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
