#!/usr/bin/env python3
"""EST enrollments and OCSP answers per second for one node and for two nodes on one PostgreSQL
database and one SoftHSM token, in the same run; and the cost of the rate limit shared by the
nodes (one bucket per client in the database) against the node's own buckets.

Each node is a `device-ca serve` with its own state directory (DEVICE_CA_HOME). EST: real
`simpleenroll` requests (own bootstrap token and CSR each, mutual TLS, a new connection each,
benchmarks/loadgen.py) from --concurrency clients, split evenly over the nodes. OCSP: wrk with 4
keep-alive connections per node on a cached `good` answer, the nodes driven at the same time.
Rounds are interleaved (one node, two nodes, ...) and the best of each compared.

On a 2-core machine a second node brings no speed-up: both nodes, the database and the load
generators share the same two cores, so the two-node figure shows what coordinating through the
database costs (leases, shared rate-limit buckets, one database for both), not what a second
machine would add.

    python3 benchmarks/nodes_bench.py [--seconds 8] [--rounds 2] [--concurrency 16]
(PostgreSQL: the local cluster, scripts/pg-start.sh; a throw-away database is made and dropped.)
"""
from __future__ import annotations

import argparse
import base64
import shutil
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import ocsp_peers  # noqa: E402
from bench_env import temp_softhsm  # noqa: E402
from loadgen import run_load  # noqa: E402


def together(*calls):
    """Run the calls at the same time; their results in order."""
    results = [None] * len(calls)

    def run(i, call):
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=2500, help="bootstrap tokens per measurement")
    args = parser.parse_args()

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from helpers import make_csr
    from integration.cli_harness import CaEnv, make_tokens, new_ca_env, openssl_csr
    from integration.est_pki import Manufacturer
    from integration.server_harness import policy_dir_with, start_server
    from pg import postgres_database

    work = Path(tempfile.mkdtemp(prefix="device-ca-nodes-bench-"))
    temp_softhsm(work)
    with postgres_database() as url:
        env = new_ca_env(work, url)
        env.run("init", "--organization", "BuildingCo")
        factory = Manufacturer(work, "Factory")
        client_cert, client_key = factory.idevid("bench-client")
        policies = policy_dir_with(work, {"bench-sensor": 'subject = "CN={device_id},OU=bench-sensor,O=BuildingCo"\n'
                                                          f'manufacturer_cas = ["{factory.pem}"]\n'})
        env.extra["DEVICE_CA_POLICY_DIR"] = str(policies)
        csr = openssl_csr(work, "lock-1", "/O=BuildingCo/OU=door-lock/CN=lock-1")
        env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--out", str(work / "lock-1.pem"))
        leaf = x509.load_pem_x509_certificate((work / "lock-1.pem").read_bytes())
        issuing = x509.load_pem_x509_certificate((env.ca_dir / "issuing.pem").read_bytes())
        ocsp_request = ocsp_peers.ocsp_request_der(leaf, issuing)

        measurements = ["one node", "two nodes", "two nodes, rate limit per node",
                        "two nodes, rate limit shared"]
        needed = args.rounds * len(measurements) * args.tokens
        devices = [f"s-{i}" for i in range(needed)]
        tokens = make_tokens(env, "bench-sensor", devices)
        requests = [({"Content-Type": "application/pkcs10",
                      "Authorization": "Basic " + base64.b64encode(f"{d}:{tokens[d]}".encode()).decode()},
                     base64.b64encode(make_csr(d, ou="bench-sensor", encoding=Encoding.DER))) for d in devices]
        batches = iter(range(0, needed, args.tokens))

        def node_env(name: str) -> CaEnv:
            home = work / name
            (home / "ca").mkdir(parents=True, exist_ok=True)
            shutil.copy(env.ca_dir / "chain.pem", home / "ca" / "chain.pem")     # what clients trust
            return CaEnv(home=home, token=env.token, pin=env.pin, database_url=url, extra=dict(env.extra))

        def measure(servers) -> tuple[dict, dict]:
            start = next(batches)
            share = args.concurrency // len(servers)
            est = together(*(lambda s=s, i=i: run_load(
                f"{s.est}/bench-sensor/simpleenroll", cert=client_cert, key=client_key, cacert=s.chain,
                concurrency=share, seconds=args.seconds,
                requests=requests[start + i:start + args.tokens:len(servers)]) for i, s in enumerate(servers)))
            ocsp = together(*(lambda s=s: ocsp_peers.wrk_ocsp(f"{s.http}/ocsp", ocsp_request, seconds=args.seconds)
                              for s in servers))
            return ({"ok_rps": sum(r["ok_rps"] for r in est), "statuses": [r["statuses"] for r in est],
                     "errors": sum(r["errors"] for r in est), "p99_ms": max(r["p99_ms"] for r in est)},
                    {"rps": sum(r["rps"] for r in ocsp), "non2xx": sum(r.get("non2xx", 0) for r in ocsp)})

        results: dict[str, list] = {m: [] for m in measurements}
        configs = {"one node": (1, ("--rate-limit", "0")), "two nodes": (2, ("--rate-limit", "0")),
                   "two nodes, rate limit per node": (2, ("--rate-limit", "1000000", "--rate-limit-scope", "node")),
                   "two nodes, rate limit shared": (2, ("--rate-limit", "1000000", "--rate-limit-scope", "cluster"))}
        for round_ in range(1, args.rounds + 1):
            for name in measurements:
                count, extra = configs[name]
                servers = []
                try:
                    servers.append(start_server(env, *extra, policy_dir=policies))
                    for n in range(1, count):
                        servers.append(start_server(node_env(f"node-{n + 1}"), *extra, policy_dir=policies))
                    est, ocsp = measure(servers)
                finally:
                    for s in servers:
                        s.stop()
                results[name].append((est, ocsp))
                print(f"round {round_}, {name}: EST {est['ok_rps']:.1f} enrollments/s (statuses {est['statuses']}, "
                      f"errors {est['errors']}, p99 {est['p99_ms']:.0f} ms), OCSP {ocsp['rps']:,.0f}/s "
                      f"(non-2xx {ocsp['non2xx']})", flush=True)

    best = {name: (max(r[0]["ok_rps"] for r in runs), max(r[1]["rps"] for r in runs))
            for name, runs in results.items()}
    print(f"best of {args.rounds} x {args.seconds:.0f} s, PostgreSQL, SoftHSM, {args.concurrency} EST clients:")
    for name, (est, ocsp) in best.items():
        print(f"  {name:32} EST {est:7.1f} enrollments/s   OCSP {ocsp:9,.0f} answers/s")
    one, two = best["one node"], best["two nodes"]
    print(f"two nodes / one node: EST {two[0] / one[0]:.2f}, OCSP {two[1] / one[1]:.2f} (2 cores: the second node "
          f"shares the first one's CPU; this is the coordination overhead, not a speed-up)")
    node, shared = best["two nodes, rate limit per node"], best["two nodes, rate limit shared"]
    print(f"rate limit shared in the database / per node: EST {shared[0] / node[0]:.2f} "
          f"(every client here is 127.0.0.1: one bucket row for all, the worst case for row contention)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
