"""Self-check of the third-party TLS tooling: nginx on a loopback port with mutual TLS, estclient."""
from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess

import pytest

from integration.tls_tools import Nginx, NginxError, estclient, estclient_binary, free_port, make_pki

pytestmark = pytest.mark.integration


def _require(tool: str, found: bool) -> None:
    """A missing tool is a failure, never a skip: scripts/setup.sh installs it."""
    if not found:
        pytest.fail(f"{tool} not installed: run scripts/install-tools.sh")


def _has_nginx() -> bool:
    return bool(shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK))


def _has_estclient() -> bool:
    try:
        estclient_binary()
        return True
    except FileNotFoundError:
        return False


BODY = "device-ca nginx ok"


def _server(pki, port: int) -> str:
    return f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {pki.server_cert};
        ssl_certificate_key {pki.server_key};
        ssl_client_certificate {pki.ca_cert};
        ssl_verify_client optional;
        location = / {{
            default_type text/plain;
            return 200 "{BODY} $ssl_protocol verify=$ssl_client_verify dn=$ssl_client_s_dn\\n";
        }}
    }}"""


def _curl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--fail", "--max-time", "20", *map(str, args)],
                          capture_output=True, text=True, timeout=30)


def test_nginx_serves_the_fixed_body_over_tls_and_verifies_client_certificates(tmp_path):
    _require("nginx", _has_nginx())
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    with Nginx(_server(pki, port)) as nginx:
        url = f"https://127.0.0.1:{port}/"
        anonymous = _curl("--cacert", pki.ca_cert, url)
        assert anonymous.returncode == 0, anonymous.stderr
        assert anonymous.stdout == f"{BODY} TLSv1.3 verify=NONE dn=\n"

        mutual = _curl("--cacert", pki.ca_cert, "--cert", pki.client_cert, "--key", pki.client_key,
                       "--data-binary", "x" * 400, url)
        assert mutual.returncode == 0, mutual.stderr
        assert mutual.stdout == f"{BODY} TLSv1.3 verify=SUCCESS dn=CN=test-client,O=device-ca tests\n"

        # The server certificate names 127.0.0.1 and localhost: curl checks both without -k.
        by_name = _curl("--cacert", pki.ca_cert, f"https://localhost:{port}/")
        assert by_name.returncode == 0, by_name.stderr
        assert nginx.worker_pids()
        directory = nginx.dir
    # Stopped and cleaned up: nothing listens on the port and the prefix directory is gone.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert not directory.exists()


def test_nginx_start_failure_raises_with_the_reason(tmp_path):
    _require("nginx", _has_nginx())
    port = free_port()
    with pytest.raises(NginxError, match="ssl_certificate_key"):
        with Nginx(f"server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {tmp_path}/none.pem; }}"):
            pass
    with pytest.raises(ValueError, match="loopback"):
        Nginx("server { listen 8080; }")


def test_estclient_runs():
    _require("estclient", _has_estclient())
    version = estclient("version", timeout=30)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("GlobalSign EST Client")
    help_ = estclient("help", timeout=30)
    assert help_.returncode == 0
    for command in ("cacerts", "csrattrs", "enroll", "reenroll", "serverkeygen"):
        assert command in help_.stdout


def test_estclient_fetches_cacerts_through_nginx_with_a_verified_server_name(tmp_path):
    """estclient's TLS and wire expectations (tls_tools docstring) against a static nginx answer."""
    _require("nginx", _has_nginx())
    _require("estclient", _has_estclient())
    pki = make_pki(tmp_path / "pki")
    p7 = subprocess.run(["openssl", "crl2pkcs7", "-nocrl", "-certfile", str(pki.ca_cert), "-outform", "DER"],
                        capture_output=True, check=True).stdout
    body = base64.encodebytes(p7).decode().replace("\n", "\\r\\n")   # 76-column lines, CRLF
    port = free_port()
    with Nginx(f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {pki.server_cert};
        ssl_certificate_key {pki.server_key};
        location = /.well-known/est/widgets/cacerts {{
            default_type application/pkcs7-mime;
            add_header Content-Transfer-Encoding base64;
            return 200 "{body}";
        }}
        location = /.well-known/est/widgets/csrattrs {{
            default_type text/plain;
            return 404 "none";
        }}
    }}"""):
        server = f"127.0.0.1:{port}"
        ok = estclient("cacerts", "-server", server, "-explicit", pki.ca_cert, "-aps", "widgets")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout == pki.ca_cert.read_text()
        untrusted = estclient("cacerts", "-server", server, "-aps", "widgets")
        assert untrusted.returncode == 1 and "unknown authority" in untrusted.stderr
        # 404 on csrattrs means "no attributes": success with no output.
        attrs = estclient("csrattrs", "-server", server, "-explicit", pki.ca_cert, "-aps", "widgets")
        assert (attrs.returncode, attrs.stdout) == (0, ""), attrs.stderr
