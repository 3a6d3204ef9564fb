"""Self-check of the revocation tooling: Mosquitto with a CRL, cfssl, mosquitto_pub, and the OCSP peers."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from integration.mosquitto import Mosquitto, mosquitto_binary, publish, refused
from integration.tls_tools import issue_leaf, make_pki

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ocsp_peers  # noqa: E402

pytestmark = pytest.mark.integration


def _require(tool: str, found) -> None:
    """A missing tool is a failure, never a skip: scripts/install-tools.sh installs it."""
    if not found:
        pytest.fail(f"{tool} not installed: run scripts/install-tools.sh")


def test_tools_on_path():
    _require("cfssl (Debian golang-cfssl)", shutil.which("cfssl"))
    _require("mosquitto_pub (Debian mosquitto-clients)", shutil.which("mosquitto_pub"))
    _require("mosquitto (Debian mosquitto)", shutil.which("mosquitto") or os.access("/usr/sbin/mosquitto", os.X_OK))
    _require("wrk", shutil.which("wrk"))
    _require("unshare (util-linux)", shutil.which("unshare"))
    mosquitto_binary()


def _write_crl(path: Path, ca_cert: x509.Certificate, ca_key, number: int, revoked_serials=()) -> None:
    """A v2 CRL (PEM, what mosquitto reads), published atomically: write, then rename."""
    now = dt.datetime.now(dt.timezone.utc)
    entries = [x509.RevokedCertificateBuilder().serial_number(s).revocation_date(now - dt.timedelta(minutes=1))
               .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build()
               for s in revoked_serials]
    crl = (x509.CertificateRevocationListBuilder(
               issuer_name=ca_cert.subject, last_update=now - dt.timedelta(minutes=1),
               next_update=now + dt.timedelta(days=1), revoked_certificates=entries)
           .add_extension(x509.CRLNumber(number), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
           .sign(ca_key, hashes.SHA256()))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    tmp.rename(path)


def test_mosquitto_refuses_revoked_client_after_reload(tmp_path):
    _require("mosquitto_pub", shutil.which("mosquitto_pub"))
    pki = make_pki(tmp_path / "pki")
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    client = x509.load_pem_x509_certificate(pki.client_cert.read_bytes())
    other, other_key = issue_leaf(ca_cert, ca_key, "other-client", server=False)
    other_pem, other_key_pem = tmp_path / "other.pem", tmp_path / "other.key"
    other_pem.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    other_key_pem.write_bytes(other_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    crl = tmp_path / "ca.crl.pem"
    _write_crl(crl, ca_cert, ca_key, 1)

    with Mosquitto(pki.ca_cert, pki.server_cert, pki.server_key, crl) as broker:
        ok = publish(broker.port, pki.ca_cert, pki.client_cert, pki.client_key, topic="devices/test", message="hi")
        assert ok.returncode == 0, ok.stderr
        assert ok.stderr == "" and ok.stdout == ""
        assert "u'test-client'" in broker.log()          # use_identity_as_username: CN is the username

        _write_crl(crl, ca_cert, ca_key, 2, [client.serial_number])
        broker.reload()
        assert "Reloading config." in broker.log()
        bad = publish(broker.port, pki.ca_cert, pki.client_cert, pki.client_key)
        assert refused(bad), (bad.returncode, bad.stderr)
        assert bad.returncode in (1, 7)
        assert bad.stderr.strip() in ("Error: The connection was lost.", "Error: Protocol error")
        assert "certificate verify failed" in broker.log()
        # the CRL refuses only what it lists
        still = publish(broker.port, pki.ca_cert, other_pem, other_key_pem)
        assert still.returncode == 0, still.stderr

        broker.restart()
        again = publish(broker.port, pki.ca_cert, pki.client_cert, pki.client_key)
        assert refused(again), (again.returncode, again.stderr)
        assert publish(broker.port, pki.ca_cert, other_pem, other_key_pem).returncode == 0


def test_cfssl_ocspserve_answers_good(tmp_path):
    _require("cfssl", shutil.which("cfssl"))
    pki = ocsp_peers.make_ocsp_pki(tmp_path)
    leaf = x509.load_pem_x509_certificate(pki.leaf_cert.read_bytes())
    der = ocsp_peers.cfssl_sign_response(pki.ca_cert, pki.responder_cert, pki.responder_key, pki.leaf_cert)
    responses = ocsp_peers.write_cfssl_responses(tmp_path / "responses.b64", [der])
    with ocsp_peers.CfsslOcspServe(responses) as server:
        status, body = ocsp_peers.post_ocsp(server.url, pki.request_der.read_bytes())
        assert status == 200
        assert ocsp_peers.check_response(body, leaf) == "GOOD"
        resp = x509.ocsp.load_der_ocsp_response(body)
        responder = x509.load_pem_x509_certificate(pki.responder_cert.read_bytes())
        # cfssl 1.2 (2016): responderID byName (not byKey as RFC 5019 prefers), responder
        # certificate included, thisUpdate truncated to the hour, nextUpdate = + -interval.
        assert resp.responder_name == responder.subject and resp.responder_key_hash is None
        assert resp.certificates == [responder]
        result = ocsp_peers.wrk_ocsp(server.url, pki.request_der.read_bytes(), seconds=1, connections=2)
        assert result["requests"] > 0 and result["non2xx"] == 0


def test_openssl_ocsp_in_private_netns(tmp_path):
    assert os.geteuid() == 0, "unshare -n needs root (CI runs as root)"
    pki = ocsp_peers.make_ocsp_pki(tmp_path)
    result = ocsp_peers.openssl_responder(pki.ca_cert, pki.responder_cert, pki.responder_key, pki.leaf_cert,
                                          pki.request_der.read_bytes(), seconds=1, connections=2)
    assert result["requests"] > 0 and result["non2xx"] == 0
    assert any(line.endswith(": good") for line in result["check"])
