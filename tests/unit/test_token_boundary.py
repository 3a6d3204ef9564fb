"""device_ca.token: the one place where hsm.HsmError becomes an error kind."""
from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import hsm
from device_ca.errors import DeviceCAError, Kind
from device_ca.token import CaToken, EcSigner, signer
from helpers import CountingSigner, software_ca


class FailingKey(CountingSigner):
    def sign(self, data, algorithm):
        raise hsm.HsmError("device", "token 'x' unavailable (CKR_DEVICE_REMOVED); retrying shortly")


def test_a_signer_is_the_key_to_the_builders_and_its_failure_is_hsm_unavailable():
    root, root_key, issuing, issuing_key = software_ca()
    wrapped = signer(CountingSigner(issuing_key))
    assert isinstance(wrapped, EcSigner) and isinstance(wrapped, ec.EllipticCurvePrivateKey)
    signature = wrapped.sign(b"data", ec.ECDSA(hashes.SHA256()))
    issuing_key.public_key().verify(signature, b"data", ec.ECDSA(hashes.SHA256()))
    failing = signer(FailingKey(issuing_key))
    with pytest.raises(DeviceCAError) as info:           # also when cryptography's builder calls sign()
        x509.CertificateRevocationListBuilder().issuer_name(issuing.subject).last_update(root.not_valid_before_utc) \
            .next_update(root.not_valid_after_utc).sign(failing, hashes.SHA256())
    assert info.value.kind is Kind.HSM_UNAVAILABLE and "CKR_DEVICE_REMOVED" in info.value.detail


def test_a_token_that_cannot_be_opened_is_hsm_unavailable(tmp_path):
    token = CaToken(lambda: hsm.TokenConfig(module=str(tmp_path / "missing.so"), token_label="x", pin="1"))
    for call in (lambda: token.signer("device-ca-issuing"), token.ping, token.labels,
                 lambda: token.generate("k", "ec:P-256")):
        with pytest.raises(DeviceCAError) as info:
            call()
        assert info.value.kind is Kind.HSM_UNAVAILABLE and "missing.so" in info.value.detail
    assert not token.opened
