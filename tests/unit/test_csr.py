"""CSR parsing and proof of possession (research B1-B3, B7, B8)."""
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca import csr
from device_ca.errors import DeviceCAError, Kind
from helpers import flip_signature_bit, make_csr


def test_pem_and_der_both_load_to_the_same_request():
    key = ec.generate_private_key(ec.SECP256R1())
    pem = make_csr(key=key)
    der = x509.load_pem_x509_csr(pem).public_bytes(Encoding.DER)
    assert csr.load(pem).der == der
    assert csr.load(der).der == der
    assert csr.load(pem).key_type == "ec:P-256"


def _kind(data):
    with pytest.raises(DeviceCAError) as info:
        csr.load(data)
    return info.value.kind, str(info.value)


def test_flipped_signature_bit_fails_proof_of_possession():
    der = make_csr(encoding=Encoding.DER)
    x509.load_der_x509_csr(flip_signature_bit(der))   # cryptography still loads it ...
    kind, message = _kind(flip_signature_bit(der))     # ... so the explicit check must refuse it
    assert kind is Kind.MALFORMED and "proof of possession" in message


def test_trailing_bytes_after_der_are_refused():
    kind, message = _kind(make_csr(encoding=Encoding.DER) + b"\x00\x01")
    assert kind is Kind.MALFORMED and "PKCS#10" in message


def test_two_pem_blocks_are_refused():
    kind, message = _kind(make_csr() + make_csr())
    assert kind is Kind.MALFORMED and "exactly one" in message


def test_text_around_pem_block_is_refused():
    kind, _ = _kind(b"hello\n" + make_csr())
    assert kind is Kind.MALFORMED


@pytest.mark.parametrize("data", [b"", b"not a csr at all", b"\x30\x03\x02\x01\x01",
                                  b"-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n"])
def test_garbage_is_malformed(data):
    kind, _ = _kind(data)
    assert kind is Kind.MALFORMED


def test_oversized_input_is_refused_before_parsing():
    kind, message = _kind(b"0" * (csr.MAX_CSR_BYTES + 1))
    assert kind is Kind.MALFORMED and "larger" in message


def test_rsa_1024_is_refused():
    kind, message = _kind(make_csr(key=rsa.generate_private_key(65537, 1024)))
    assert kind is Kind.POLICY_REJECTED and "rsa:1024" in message


def test_p192_is_refused():
    kind, message = _kind(make_csr(key=ec.generate_private_key(ec.SECP192R1())))
    assert kind is Kind.POLICY_REJECTED and "secp192r1" in message


def test_sha1_signature_is_refused(tmp_path):
    # cryptography no longer signs with SHA-1; openssl still does, as old device firmware might.
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "k.pem"), "-sha1", "-subj", "/CN=lock-101", "-out",
                    str(tmp_path / "r.pem")], check=True, capture_output=True)
    kind, message = _kind((tmp_path / "r.pem").read_bytes())
    assert kind is Kind.POLICY_REJECTED and "sha1" in message


def test_request_for_ca_true_is_refused():
    kind, message = _kind(make_csr(extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)]))
    assert kind is Kind.POLICY_REJECTED and "CA:TRUE" in message


def test_request_for_key_cert_sign_is_refused():
    ku = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
                       encipher_only=False, decipher_only=False)
    kind, message = _kind(make_csr(extensions=[(ku, True)]))
    assert kind is Kind.POLICY_REJECTED and "keyCertSign" in message


def test_ca_false_request_is_fine():
    info = csr.load(make_csr(extensions=[(x509.BasicConstraints(ca=False, path_length=None), True)]))
    assert info.key_type == "ec:P-256"
