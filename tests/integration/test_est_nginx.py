"""device-ca behind nginx: the client certificate verified by nginx arrives in a header, which
device-ca believes only from the configured proxy address."""
from __future__ import annotations

import json
import subprocess
import urllib.parse

import pytest

from integration.cli_harness import new_ca_env
from integration.est_pki import device_csr, pkcs7_certificates
from integration.server_harness import free_port
from integration.tls_tools import Nginx, mtls_server_block

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEADER = "X-SSL-Client-Cert"


@pytest.fixture
def proxied(tmp_path, database_url, serve):
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    server = serve(env, "--rate-limit", "0", "--trusted-proxy", "127.0.0.1", "--client-cert-header", HEADER)
    tls = env.home / "tls"
    port = free_port()
    config = mtls_server_block(port, tls / "server.pem", tls / "server.key", tls / "client-ca.pem", "optional", f"""
            location /.well-known/est/ {{
                proxy_pass https://127.0.0.1:{server.port};
                proxy_bind 127.0.0.1;
                proxy_set_header {HEADER} $ssl_client_escaped_cert;
                proxy_set_header X-Forwarded-For $remote_addr;
            }}""")
    with Nginx(config) as nginx:
        yield env, server, nginx


def _curl(url, chain, *args, body=None):
    proc = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--cacert", str(chain), *args,
                           "-H", "Content-Type: application/pkcs10", "--data-binary", "@-", url],
                          input=body, capture_output=True, timeout=60)
    data, _, status = proc.stdout.rpartition(b"\n")
    return int(status or 0), data


def _enroll_through(env, tmp_path, via_nginx, chain, device):
    """A badge reader enrolled through nginx with a bootstrap token: (its certificate, the PEM
    file, its key file, a renewal CSR body with the same key)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    secret = env.run("token", "create", "--policy", "badge-reader", "--device-id", device).stdout.decode().strip()
    key, body = device_csr(tmp_path, device, f"/O=BuildingCo/OU=badge-reader/CN={device}")
    status, data = _curl(f"{via_nginx}/simpleenroll", chain, "-u", f"{device}:{secret}", body=body)
    assert status == 200, data
    (cert,) = pkcs7_certificates(data)
    current = tmp_path / f"{device}.pem"
    current.write_bytes(cert.public_bytes(Encoding.PEM))
    _, renew = device_csr(tmp_path, f"{device}r", f"/O=BuildingCo/OU=badge-reader/CN={device}",
                          san=f"URI:urn:dev:org:32473-{device}", key=key)
    return cert, current, key, renew


def test_reenroll_through_nginx_and_header_only_from_the_proxy(proxied, tmp_path):
    env, server, nginx = proxied
    chain = env.ca_dir / "chain.pem"
    via_nginx = f"https://127.0.0.1:{nginx.port}/.well-known/est/badge-reader"
    cert, current, key, renew = _enroll_through(env, tmp_path, via_nginx, chain, "br-5")

    # nginx verifies the certificate and passes it on; device-ca renews
    status, data = _curl(f"{via_nginx}/simplereenroll", chain, "--cert", str(current), "--key", str(key), body=renew)
    assert status == 200, data
    assert pkcs7_certificates(data)[0].subject == cert.subject

    forged = urllib.parse.quote(current.read_text())
    # straight to device-ca from an address that is not the proxy: the header is ignored
    direct = f"https://127.0.0.1:{server.port}/.well-known/est/badge-reader/simplereenroll"
    status, data = _curl(direct, chain, "--interface", "127.0.0.2", "-H", f"{HEADER}: {forged}", body=renew)
    assert status == 401 and b"current certificate" in data
    # through nginx without a client certificate: nginx replaces the forged header with nothing
    status, data = _curl(f"{via_nginx}/simplereenroll", chain, "-H", f"{HEADER}: {forged}", body=renew)
    assert status == 401 and b"current certificate" in data
    assert len(json.loads(env.run("list", "--device-id", "br-5", "--json").stdout)) == 2



def test_the_header_is_believed_from_a_proxy_that_proves_it_with_its_certificate(tmp_path, database_url, serve):
    """Attack (issue 15, item 6): trust by address lets any local process put any certificate in
    the header. With no --trusted-proxy at all, nginx proves it is the proxy with a front-proxy
    certificate on its own connection (proxy_ssl_certificate): a device renews through it; a direct
    caller from the same address with a forged header is not believed."""
    from integration.cli_harness import openssl_csr

    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    csr = openssl_csr(tmp_path, "proxy-nginx-1", "/O=BuildingCo/OU=front-proxy/CN=proxy-nginx-1")
    env.run("issue", "--policy", "front-proxy", "--csr", str(csr), "--out", str(tmp_path / "proxy-nginx-1.pem"))
    server = serve(env, "--rate-limit", "0", "--client-cert-header", HEADER)
    tls = env.home / "tls"
    port = free_port()
    config = mtls_server_block(port, tls / "server.pem", tls / "server.key", tls / "client-ca.pem", "optional", f"""
            location /.well-known/est/ {{
                proxy_pass https://127.0.0.1:{server.port};
                proxy_ssl_certificate {tmp_path / "proxy-nginx-1.pem"};
                proxy_ssl_certificate_key {tmp_path / "proxy-nginx-1.key"};
                proxy_set_header {HEADER} $ssl_client_escaped_cert;
            }}""")
    chain = env.ca_dir / "chain.pem"
    with Nginx(config) as nginx:
        via_nginx = f"https://127.0.0.1:{nginx.port}/.well-known/est/badge-reader"
        _, current, key, renew = _enroll_through(env, tmp_path, via_nginx, chain, "br-6")
        status, data = _curl(f"{via_nginx}/simplereenroll", chain, "--cert", str(current), "--key", str(key),
                             body=renew)
        assert status == 200, data                              # the header, believed from the proven proxy
        forged = urllib.parse.quote(current.read_text())
        direct = f"https://127.0.0.1:{server.port}/.well-known/est/badge-reader/simplereenroll"
        status, data = _curl(direct, chain, "-H", f"{HEADER}: {forged}", body=renew)       # same address as nginx
        assert status == 401 and b"current certificate" in data, data
    assert len(json.loads(env.run("list", "--device-id", "br-6", "--json").stdout)) == 2
