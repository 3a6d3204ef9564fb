"""Device-side material for EST tests: keys and CSRs made with openssl, factory (IDevID) PKIs."""
from __future__ import annotations

import base64
import datetime as dt
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def device_csr(directory: Path, name: str, subject: str, san: str | None = None, key: Path | None = None) -> tuple[Path, bytes]:
    """(key file, base64 DER CSR body) made by openssl; reuses ``key`` when given (renewal)."""
    key_path = key or directory / f"{name}.key"
    args = ["openssl", "req", "-new", "-subj", subject, "-outform", "DER", "-out", str(directory / f"{name}.der")]
    args += ["-key", str(key_path)] if key else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                                                  "-keyout", str(key_path)]
    if san:
        args += ["-addext", f"subjectAltName={san}"]
    subprocess.run(args, check=True, capture_output=True)
    return key_path, base64.encodebytes((directory / f"{name}.der").read_bytes())


def simpleenroll(server, directory: Path, device: str, secret: str, policy: str = "badge-reader",
                 extra: tuple[str, ...] = ()) -> tuple[int, bytes, dict[str, str]]:
    """A fresh key and CSR for ``device`` (openssl), POSTed to ``server``'s simpleenroll with its
    bootstrap secret by curl: (status, body, headers)."""
    _, body = device_csr(directory, device, f"/O=BuildingCo/OU={policy}/CN={device}")
    return server.curl(f"/{policy}/simpleenroll", "-H", "Content-Type: application/pkcs10", "-u", f"{device}:{secret}",
                       *extra, body=body)


def pkcs7_certificates(body: bytes) -> list[x509.Certificate]:
    """The certificates of a base64 certs-only response, read by openssl (an independent parser)."""
    der = base64.b64decode(body)
    out = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"], input=der, capture_output=True,
                         check=True).stdout
    return x509.load_pem_x509_certificates(out)


class Manufacturer:
    """A factory CA that issues IDevID certificates (serialNumber = device id)."""

    def __init__(self, directory: Path, name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                             x509.NameAttribute(NameOID.COMMON_NAME, f"{name} IDevID CA")])
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False,
                                                  key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                     .sign(self.key, hashes.SHA256()))
        self.directory = directory
        self.pem = directory / f"{name}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def idevid(self, device_id: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, device_id),
                                         x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = self.directory / f"idevid-{device_id}.pem", self.directory / f"idevid-{device_id}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path
