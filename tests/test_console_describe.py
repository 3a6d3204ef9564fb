"""The certificate detail's building blocks (web/console/describe.py) on a certificate issued by the
real RA, checked against what `openssl x509 -text` says about the same certificate, and the chain
found by signature among two issuing-CA generations of one name."""
from __future__ import annotations

import re
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca.authority import CaProfile, build_issuing
from device_ca.web.console.describe import chain, extensions
from helpers import make_csr, software_ca


def _openssl_text(certificate: x509.Certificate) -> str:
    proc = subprocess.run(["openssl", "x509", "-noout", "-text"], input=certificate.public_bytes(Encoding.PEM),
                          capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


def _issued(store, policies, clock):
    from device_ca.ca.issuer import Issuer, PublicUrls
    from device_ca.ca.lint import pkilint_gate
    from device_ca.ra.authority import RegistrationAuthority

    root, root_key, issuing, issuing_key = software_ca(clock)
    issuer = Issuer(issuing, issuing_key, clock, PublicUrls("http://127.0.0.1:8080"), pkilint_gate)
    record = RegistrationAuthority(store, policies, lambda: issuer, clock).issue(
        "door-lock", make_csr("lock-42"), actor="test").record
    return x509.load_der_x509_certificate(record.der), root, root_key, issuing


def test_extensions_say_what_openssl_says(store, policies, clock):
    leaf, *_ = _issued(store, policies, clock)
    shown = {e.name: e for e in extensions(leaf)}
    text = _openssl_text(leaf)
    assert [e.oid for e in extensions(leaf)] == [e.oid.dotted_string for e in leaf.extensions]
    assert shown["basicConstraints"].values == ("CA: false",) and shown["basicConstraints"].critical
    assert re.search(r"Basic Constraints: critical\s+CA:FALSE", text)
    assert shown["keyUsage"].critical == ("Key Usage: critical" in text)
    assert set(shown["keyUsage"].values) == {"digitalSignature"} and "Digital Signature" in text
    assert shown["extendedKeyUsage"].values == ("clientAuth",) and "TLS Web Client Authentication" in text
    ski = shown["subjectKeyIdentifier"].values[0]
    assert re.search(r"Subject Key Identifier:\s+" + re.escape(ski), text)
    aki = shown["authorityKeyIdentifier"].values[0].removeprefix("keyid ")
    assert aki in text
    for line in shown["authorityInfoAccess"].values:            # e.g. "OCSP: URI:http://..."
        method, _, location = line.partition(": ")
        assert f"{method} - {location}" in text
    for uri in shown["cRLDistributionPoints"].values:
        assert uri in text
    assert shown["subjectAltName"].values == ("URI:urn:dev:org:32473-lock-42",)
    assert "URI:urn:dev:org:32473-lock-42" in text


def test_chain_goes_to_the_root_by_signature(store, policies, clock):
    leaf, root, root_key, issuing = _issued(store, policies, clock)
    from cryptography.hazmat.primitives.asymmetric import ec

    same_name = build_issuing(root, root_key, ec.generate_private_key(ec.SECP256R1()).public_key(),
                              CaProfile(organization="Test CA"), clock)
    assert same_name.subject == issuing.subject                       # another generation, same name
    found = chain(leaf, [root, same_name, issuing])
    assert found == [leaf, issuing, root]
    assert chain(leaf, [same_name]) == [leaf]                         # the right issuer unknown: stop
    assert chain(root, [root, issuing]) == [root]
