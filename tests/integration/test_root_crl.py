"""The root CRL and the compromise drill of an issuing CA, against SoftHSM, the real CLI and a running
`device-ca serve` (SQLite or PostgreSQL): the root CRL and root certificate are served where the
issuing CA certificate points; strict relying parties (openssl verify -crl_check_all, with the CRLs
given and fetched from the CRL distribution points; GnuTLS certtool) accept a device certificate
before `ca revoke-issuing` and refuse it after; the operator's command without --yes changes
nothing; a device enrolling afterwards gets no certificate."""
from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca import lint
from integration.cli_harness import make_tokens, new_ca_env, openssl, openssl_csr
from integration.est_pki import pkcs7_certificates, simpleenroll
from integration.server_harness import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory, module_database_url, module_serve):
    tmp = tmp_path_factory.mktemp("rootcrl")
    env = new_ca_env(tmp, module_database_url)
    http_port = free_port()             # the URLs in the certificates are the server's own
    env.extra["DEVICE_CA_PUBLIC_URL"] = base = f"http://127.0.0.1:{http_port}"
    env.run("init", "--organization", "BuildingCo")
    server = module_serve.launch(env, "--rate-limit", "0", "--http-port", str(http_port))
    server.http_port = http_port
    server.wait_ready()
    return env, server, base, tmp


def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {}


def _pem_crls(base: str, directory, names=("root", "issuing")) -> str:
    """The CRLs, as served, in one PEM file (openssl -CRLfile, certtool --load-crl)."""
    pems = []
    for name in names:
        status, der, _ = _get(f"{base}/crl/{name}.crl")
        assert status == 200, name
        pems.append(subprocess.run(["openssl", "crl", "-inform", "DER"], input=der, capture_output=True,
                                   check=True).stdout)
    path = directory / f"{'-'.join(names)}.pem"
    path.write_bytes(b"".join(pems))
    return str(path)


def _verify(env, leaf, *args: str):
    ca = env.ca_dir
    return openssl("verify", "-CAfile", str(ca / "root.pem"), "-untrusted", str(ca / "issuing.pem"), *args, str(leaf))


def _certtool(env, leaf, crls: str, directory):
    chain = directory / "leaf-chain.pem"
    chain.write_bytes(leaf.read_bytes() + (env.ca_dir / "issuing.pem").read_bytes())
    return subprocess.run(["certtool", "--verify", "--load-ca-certificate", str(env.ca_dir / "root.pem"),
                           "--load-crl", crls, "--infile", str(chain)], capture_output=True, text=True, timeout=60)


def test_root_crl_and_root_certificate_are_served_where_the_issuing_ca_points(served, tmp_path):
    env, _, base, _ = served
    issuing = x509.load_pem_x509_certificate((env.ca_dir / "issuing.pem").read_bytes())
    root = x509.load_pem_x509_certificate((env.ca_dir / "root.pem").read_bytes())
    dp = issuing.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value
    aia = issuing.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value[0].access_location.value
    assert (dp, aia) == (f"{base}/crl/root.crl", f"{base}/ca/root.crt")
    status, der, headers = _get(dp)
    assert status == 200 and headers["content-type"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(der)                 # signed by the server's start (the root key is here)
    assert crl.issuer == root.subject and crl.is_signature_valid(root.public_key()) and len(crl) == 0
    assert (crl.next_update_utc - crl.last_update_utc).days == 365
    assert lint.lint_crl(der) == []
    status, der, headers = _get(aia)
    assert status == 200 and x509.load_der_x509_certificate(der) == root
    (tmp_path / "root.crl").write_bytes(_get(dp)[1])
    checked = openssl("crl", "-inform", "DER", "-in", str(tmp_path / "root.crl"), "-noout", "-CAfile",
                      str(env.ca_dir / "root.pem"))
    assert checked.returncode == 0 and "verify OK" in checked.stdout + checked.stderr, checked.stderr
    out = env.run("crl", "generate", "--root").stdout.decode()
    assert out.startswith("root CRL 2:"), out
    assert x509.load_der_x509_crl(_get(dp)[1]).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2


def test_compromise_drill_strict_validators_refuse_after_revoke_issuing(served, tmp_path):
    env, server, base, _ = served
    secrets = make_tokens(env, "badge-reader", ["br-1", "br-2"])
    status, body, _ = simpleenroll(server, tmp_path, "br-1", secrets["br-1"])
    assert status == 200, body
    leaf = tmp_path / "br-1.pem"
    leaf.write_bytes(pkcs7_certificates(body)[0].public_bytes(Encoding.PEM))

    crls = _pem_crls(base, tmp_path)
    before = _verify(env, leaf, "-crl_check_all", "-CRLfile", crls)
    assert before.returncode == 0 and f"{leaf}: OK" in before.stdout, before.stdout + before.stderr
    # CRLs fetched from the CRL DPs; openssl also wants a CRL for the trust anchor itself, which has no
    # CRL DP (and is covered by its own CRL), so the root CRL is given as a file there
    fetched = _verify(env, leaf, "-crl_check_all", "-crl_download", "-CRLfile", _pem_crls(base, tmp_path, ("root",)))
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    gnutls = _certtool(env, leaf, crls, tmp_path)
    assert gnutls.returncode == 0 and "Chain verification output: Verified" in gnutls.stdout, gnutls.stdout

    show = json.loads(env.run("ca", "show", "--json").stdout)
    unconfirmed = env.run("ca", "revoke-issuing", "--reason", "cACompromise", check=False)
    assert unconfirmed.returncode == 3 and b"--yes" in unconfirmed.stderr
    assert json.loads(env.run("ca", "show", "--json").stdout) == show            # nothing changed
    assert len(x509.load_der_x509_crl(_get(f"{base}/crl/root.crl")[1])) == 0

    done = env.run("ca", "revoke-issuing", "--reason", "cACompromise", "--yes")
    assert b"no active issuing CA is left" in done.stderr
    issuing_serial = next(r["serial"] for r in json.loads(env.run("ca", "show", "--json").stdout)
                          if r["name"] == "issuing" and r["status"] == "revoked")
    root_crl = x509.load_der_x509_crl(_get(f"{base}/crl/root.crl")[1])             # at once, on the server
    entry = root_crl.get_revoked_certificate_by_serial_number(int(issuing_serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.ca_compromise

    crls = _pem_crls(base, tmp_path)
    after = _verify(env, leaf, "-crl_check_all", "-CRLfile", crls)
    assert after.returncode != 0 and "error 23 at 1 depth lookup: certificate revoked" in after.stderr, after.stderr
    assert "CN = BuildingCo Device Issuing CA" in after.stderr
    fetched = _verify(env, leaf, "-crl_check_all", "-crl_download", "-CRLfile", _pem_crls(base, tmp_path, ("root",)))
    assert fetched.returncode != 0 and "at 1 depth lookup: certificate revoked" in fetched.stderr, fetched.stderr
    leaf_only = _verify(env, leaf, "-crl_check", "-CRLfile", crls)       # a leaf-only check cannot see it
    assert leaf_only.returncode == 0, leaf_only.stdout + leaf_only.stderr
    gnutls = _certtool(env, leaf, crls, tmp_path)
    assert gnutls.returncode != 0 and "revoked" in gnutls.stdout.lower(), gnutls.stdout

    # cacerts, on every worker (each answered it at the start), no longer offers the revoked CA
    for _ in range(8):
        status, body, _ = server.curl("/cacerts")
        assert status == 200
        assert [c.subject.rfc4514_string() for c in pkcs7_certificates(body)] == ["CN=BuildingCo Root CA,O=BuildingCo"]
    # no more certificates from the revoked CA, by any path
    status, body, headers = simpleenroll(server, tmp_path, "br-2", secrets["br-2"])
    assert status == 503 and b"no issuing CA available" in body, (status, body)
    csr = openssl_csr(tmp_path, "lock-9", "/O=BuildingCo/OU=door-lock/CN=lock-9")
    refused = env.run("issue", "--policy", "door-lock", "--csr", str(csr), check=False)
    assert refused.returncode == 14 and b"revoked" in refused.stderr, refused.stderr
    devices = {c["device_id"] for c in json.loads(env.run("list", "--json").stdout)}
    assert "br-1" in devices and not {"br-2", "lock-9"} & devices
    assert b"OK" in env.run("audit", "verify").stdout
    again = env.run("ca", "revoke-issuing", "--reason", "cACompromise", "--yes", check=False)
    assert again.returncode == 6

    # the revoked CA still signs its own CRL and OCSP answers (for relying parties that check only the
    # leaf); --revoke-certificates revokes what it issued, so that those refuse it too
    env.run("crl", "generate")
    env.run("ocsp", "refresh")
    done = env.run("ca", "revoke-issuing", "--reason", "cACompromise", "--revoke-certificates", "--yes").stdout
    assert b"revoking its certificates" in done and b"certificate(s) of issuing revoked" in done, done
    listed = {c["device_id"]: (c["status"], c["revocation_reason"]) for c in json.loads(env.run("list", "--json").stdout)}
    assert listed["br-1"] == ("revoked", "cACompromise")
    ocsp = openssl("ocsp", "-issuer", str(env.ca_dir / "issuing.pem"), "-cert", str(leaf), "-url", f"{base}/ocsp",
                   "-CAfile", str(env.ca_dir / "root.pem"), "-no_nonce")
    assert f"{leaf}: revoked" in ocsp.stdout and "Reason: cACompromise" in ocsp.stdout, ocsp.stdout + ocsp.stderr

