"""Keys generated on SoftHSM: protection attributes, and cryptography's builders signing with them."""
from __future__ import annotations

import copy
import datetime as dt
import os
import re
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from hsm import HsmError, Pkcs11EcPrivateKey, Pkcs11PrivateKey, Pkcs11RsaPrivateKey

pytestmark = pytest.mark.integration

SPECS = ["ec:P-256", "ec:P-384", "rsa:3072"]
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _verify(public_key, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, data, ec.ECDSA(algorithm))
    else:
        public_key.verify(signature, data, padding.PKCS1v15(), algorithm)


def _ca_certificate(key, common_name: str = "Test CA") -> x509.Certificate:
    return (x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))


@pytest.mark.parametrize("spec", SPECS)
def test_generated_key_shape(hsm_keys, spec: str) -> None:
    key = hsm_keys[spec]
    assert isinstance(key, Pkcs11PrivateKey)
    assert key.label == f"test-{spec}"
    if spec.startswith("ec:"):
        assert isinstance(key, Pkcs11EcPrivateKey) and isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == {"ec:P-256": "secp256r1", "ec:P-384": "secp384r1"}[spec]
        assert key.key_size == int(spec[-3:])
        assert isinstance(key.public_key(), ec.EllipticCurvePublicKey)
    else:
        assert isinstance(key, Pkcs11RsaPrivateKey) and isinstance(key, rsa.RSAPrivateKey)
        assert key.key_size == 3072 and key.public_key().public_numbers().e == 65537


@pytest.mark.parametrize("spec", SPECS)
def test_key_attributes_sensitive_and_never_extractable(hsm_token, hsm_keys, spec: str) -> None:
    info = hsm_token.describe_key(f"test-{spec}")
    assert info["token"] and info["private"] and info["sensitive"] and info["always_sensitive"]
    assert not info["extractable"] and info["never_extractable"] and info["local"]
    assert info["sign"] and not info["decrypt"] and not info["unwrap"] and not info["derive"]
    assert len(info["id"]) == 32 and info["public_ids"] == [info["id"]]  # public key shares CKA_ID


def test_pkcs11_tool_lists_keys_as_never_extractable(hsm_softhsm, hsm_keys) -> None:
    env = hsm_softhsm.env(HSM_TEST_PIN=hsm_softhsm.pin)
    result = subprocess.run(
        ["pkcs11-tool", "--module", hsm_softhsm.module, "--token-label", hsm_softhsm.labels["main"],
         "--login", "--pin", "env:HSM_TEST_PIN", "--list-objects"],
        env=env, capture_output=True, text=True, timeout=60, check=True)
    blocks = re.split(r"\n(?=\S)", result.stdout)
    for spec in SPECS:
        label = f"test-{spec}"
        private = [b for b in blocks if b.startswith("Private Key Object") and f"label:      {label}\n" in b + "\n"]
        public = [b for b in blocks if b.startswith("Public Key Object") and f"label:      {label}\n" in b + "\n"]
        assert len(private) == 1 and len(public) == 1, result.stdout
        access = re.search(r"Access:\s+(.*)", private[0]).group(1)
        assert "never extractable" in access and "always sensitive" in access, access
        assert re.search(r"\bsensitive\b", access.replace("always sensitive", ""))
        ids = {re.search(r"ID:\s+(\w+)", block).group(1) for block in private + public}
        assert len(ids) == 1


@pytest.mark.parametrize("spec", SPECS)
def test_certificate_builder_signs_with_token_key(hsm_keys, spec: str) -> None:
    key = hsm_keys[spec]
    cert = _ca_certificate(key)
    cert.verify_directly_issued_by(cert)
    _verify(key.public_key(), cert.signature, cert.tbs_certificate_bytes, hashes.SHA256())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("device-1")).issuer_name(cert.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
            .sign(key, hashes.SHA384()))
    leaf.verify_directly_issued_by(cert)
    reloaded = x509.load_der_x509_certificate(leaf.public_bytes(serialization.Encoding.DER))
    reloaded.verify_directly_issued_by(cert)


@pytest.mark.parametrize("spec", SPECS)
def test_crl_builder_signs_with_token_key(hsm_keys, spec: str) -> None:
    key = hsm_keys[spec]
    revoked = (x509.RevokedCertificateBuilder().serial_number(12345).revocation_date(NOW)
               .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(_name("Test CA"))
           .last_update(NOW).next_update(NOW + dt.timedelta(days=1))
           .add_extension(x509.CRLNumber(1), critical=False)
           .add_revoked_certificate(revoked).sign(key, hashes.SHA256()))
    assert crl.is_signature_valid(key.public_key())
    reloaded = x509.load_der_x509_crl(crl.public_bytes(serialization.Encoding.DER))
    assert reloaded.is_signature_valid(key.public_key())
    assert reloaded.get_revoked_certificate_by_serial_number(12345) is not None


@pytest.mark.parametrize("spec", SPECS)
def test_ocsp_response_builder_signs_with_token_key(hsm_keys, spec: str) -> None:
    key = hsm_keys[spec]
    issuer = _ca_certificate(key)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("device-2")).issuer_name(issuer.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    response = (ocsp.OCSPResponseBuilder()
                .add_response(cert=leaf, issuer=issuer, algorithm=hashes.SHA256(),
                              cert_status=ocsp.OCSPCertStatus.GOOD, this_update=NOW,
                              next_update=NOW + dt.timedelta(hours=1), revocation_time=None,
                              revocation_reason=None)
                .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
                .sign(key, hashes.SHA256()))
    reloaded = ocsp.load_der_ocsp_response(response.public_bytes(serialization.Encoding.DER))
    assert reloaded.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert reloaded.serial_number == leaf.serial_number
    _verify(key.public_key(), reloaded.signature, reloaded.tbs_response_bytes, hashes.SHA256())


def test_rsa_pss_and_prehashed_variants(hsm_keys) -> None:
    key = hsm_keys["rsa:3072"]
    public = key.public_key()
    data = os.urandom(200)
    for algorithm in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        public.verify(key.sign(data, padding.PKCS1v15(), algorithm), data, padding.PKCS1v15(), algorithm)
        for salt in (padding.PSS.DIGEST_LENGTH, padding.PSS.MAX_LENGTH, 20):
            pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=salt)
            public.verify(key.sign(data, pss, algorithm), data, pss, algorithm)
        digest = hashes.Hash(algorithm)
        digest.update(data)
        prehashed = digest.finalize()
        signature = key.sign(prehashed, padding.PKCS1v15(), Prehashed(algorithm))
        public.verify(signature, data, padding.PKCS1v15(), algorithm)
        pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.DIGEST_LENGTH)
        public.verify(key.sign(prehashed, pss, Prehashed(algorithm)), data, pss, algorithm)
    cert = (x509.CertificateBuilder().subject_name(_name("PSS CA")).issuer_name(_name("PSS CA"))
            .public_key(public).serial_number(1).not_valid_before(NOW)
            .not_valid_after(NOW + dt.timedelta(days=1))
            .sign(key, hashes.SHA256(),
                  rsa_padding=padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)))
    cert.verify_directly_issued_by(cert)


@pytest.mark.parametrize("spec", ["ec:P-256", "ec:P-384"])
def test_ecdsa_hashes_and_prehashed(hsm_keys, spec: str) -> None:
    key = hsm_keys[spec]
    data = os.urandom(100)
    for algorithm in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        key.public_key().verify(key.sign(data, ec.ECDSA(algorithm)), data, ec.ECDSA(algorithm))
        digest = hashes.Hash(algorithm)
        digest.update(data)
        signature = key.sign(digest.finalize(), ec.ECDSA(Prehashed(algorithm)))
        key.public_key().verify(signature, data, ec.ECDSA(algorithm))


def test_find_key_and_labels(hsm_token, hsm_keys) -> None:
    for spec, key in hsm_keys.items():
        found = hsm_token.find_key(f"test-{spec}")
        assert type(found) is type(key)
        assert found.public_key() == key.public_key()
        data = b"find me"
        _verify(key.public_key(), found.sign(data, *(
            (ec.ECDSA(hashes.SHA256()),) if spec.startswith("ec") else (padding.PKCS1v15(), hashes.SHA256()))),
            data, hashes.SHA256())
    assert hsm_token.find_key("no-such-label") is None
    assert {f"test-{spec}" for spec in SPECS} <= set(hsm_token.labels())


def test_generate_with_existing_label_is_refused(hsm_token, hsm_keys) -> None:
    before = hsm_token.labels()
    with pytest.raises(HsmError) as info:
        hsm_token.generate_key("test-ec:P-256", "ec:P-384")
    assert info.value.reason == "exists"
    assert hsm_token.labels() == before


def test_unknown_spec_is_refused(hsm_token) -> None:
    for spec in ("ec:P-521", "rsa:1024", "ed25519", ""):
        with pytest.raises(HsmError) as info:
            hsm_token.generate_key(f"bad-{spec}", spec)
        assert info.value.reason == "key"
    assert not any(label.startswith("bad-") for label in hsm_token.labels())


def test_private_material_never_leaves(hsm_keys) -> None:
    ec_key, rsa_key = hsm_keys["ec:P-256"], hsm_keys["rsa:3072"]
    calls = [
        lambda: ec_key.private_numbers(),
        lambda: ec_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()),
        lambda: ec_key.exchange(ec.ECDH(), ec.generate_private_key(ec.SECP256R1()).public_key()),
        lambda: rsa_key.private_numbers(),
        lambda: rsa_key.decrypt(b"x" * 384, padding.PKCS1v15()),
    ]
    for call in calls:
        with pytest.raises(HsmError) as info:
            call()
        assert info.value.reason == "key" and str(info.value) == "private key material never leaves the token"
    assert copy.deepcopy(ec_key) is ec_key and copy.copy(rsa_key) is rsa_key
