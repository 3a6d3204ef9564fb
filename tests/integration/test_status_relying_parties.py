"""Relying parties that enforce revocation with device-ca: nginx checking client certificates
against the OCSP responder (ssl_ocsp)."""
from __future__ import annotations

import subprocess

import pytest

from integration.cli_harness import new_ca_env, openssl, openssl_csr
from integration.mosquitto import Mosquitto, publish, refused
from integration.server_harness import free_port
from integration.tls_tools import Nginx, mtls_server_block

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_nginx_ssl_ocsp_lets_good_devices_in_and_refuses_revoked(tmp_path, database_url, serve):
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    server = serve(env, "--rate-limit", "0")
    csr = openssl_csr(tmp_path, "lock-1", "/O=BuildingCo/OU=door-lock/CN=lock-1")
    cert, key = tmp_path / "lock-1.pem", tmp_path / "lock-1.key"
    issued = env.run("issue", "--policy", "door-lock", "--csr", str(csr), "--out", str(cert)).stderr.decode()
    serial = issued.split("issued serial ")[1].split()[0]
    tls = env.home / "tls"
    port = free_port()
    config = mtls_server_block(port, tls / "server.pem", tls / "server.key", env.ca_dir / "chain.pem", "on", f"""
                ssl_ocsp leaf;
                ssl_ocsp_responder {server.http}/ocsp;
                ssl_ocsp_cache off;
                location / {{ return 200 "door open\\n"; }}""")

    def knock():
        return subprocess.run(["curl", "-s", "-w", "\\n%{http_code}", "--cacert", str(env.ca_dir / "chain.pem"),
                               "--cert", str(cert), "--key", str(key), f"https://127.0.0.1:{port}/"],
                              capture_output=True, text=True, timeout=30).stdout

    with Nginx(config) as nginx:
        assert knock().endswith("\n200"), nginx.log_tail()
        env.run("revoke", serial, "--reason", "keyCompromise")
        refused = knock()
        assert not refused.endswith("\n200") and "door open" not in refused, refused
        assert "revoked" in nginx.log_tail().lower() or refused.endswith("\n400")


def test_mosquitto_refuses_a_revoked_device_after_the_crl_refresh(tmp_path, database_url):
    env = new_ca_env(tmp_path, database_url)
    env.run("init", "--organization", "BuildingCo")
    ca = env.ca_dir
    csr = openssl_csr(tmp_path, "env-00aa", "/O=BuildingCo/OU=env-sensor/CN=env-00aa")
    cert, key = tmp_path / "env-00aa.pem", tmp_path / "env-00aa.key"
    issued = env.run("issue", "--policy", "env-sensor", "--csr", str(csr), "--out", str(cert)).stderr.decode()
    serial = issued.split("issued serial ")[1].split()[0]
    env.run("tls", "server-cert", "--host", "127.0.0.1", "--out-dir", str(tmp_path / "tls"))
    crl_der, crl_pem = tmp_path / "ca.crl", tmp_path / "ca.crl.pem"

    def refresh_crl():
        env.run("crl", "generate", "--out", str(crl_der))
        pem = openssl("crl", "-inform", "DER", "-in", str(crl_der), "-out", str(crl_pem) + ".tmp")
        assert pem.returncode == 0, pem.stderr
        (tmp_path / "ca.crl.pem.tmp").replace(crl_pem)

    refresh_crl()
    with Mosquitto(ca / "chain.pem", tmp_path / "tls" / "server.pem", tmp_path / "tls" / "server.key", crl_pem) as broker:
        ok = publish(broker.port, ca / "chain.pem", cert, key)
        assert ok.returncode == 0, ok.stderr + broker.log_tail()
        env.run("revoke", serial, "--reason", "keyCompromise")
        refresh_crl()
        broker.reload()
        result = publish(broker.port, ca / "chain.pem", cert, key)
        assert refused(result), (result.returncode, result.stderr)
