"""EST wire encodings (RFC 7030 / RFC 8951 / RFC 9908), checked with independent parsers:
asn1crypto, the openssl command line and Python's email package."""
from __future__ import annotations

import base64
import datetime as dt
import email.parser
import email.policy
import shutil
import subprocess
import warnings

import pytest
from asn1crypto import cms, core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import NameOID

from device_ca.errors import DeviceCAError, Kind
from device_ca.web import est_codec
from helpers import make_csr

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _cert(cn: str, key, issuer_cn: str | None = None, issuer_key=None) -> x509.Certificate:
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn or cn)])
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=30))
            .sign(issuer_key or key, hashes.SHA256()))


@pytest.fixture(scope="module")
def chain() -> list[x509.Certificate]:
    """leaf, issuing CA, root: an order that is not the DER sort order of the three."""
    root_key, ca_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("zz Root", root_key)
    issuing = _cert("mm Issuing", ca_key, "zz Root", root_key)
    leaf = _cert("aa lock-101", leaf_key, "mm Issuing", ca_key)
    return [leaf, issuing, root]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _malformed(body: bytes) -> str:
    with pytest.raises(DeviceCAError) as info:
        est_codec.decode_base64_body(body)
    assert info.value.kind is Kind.MALFORMED
    assert "\n" not in str(info.value)
    return str(info.value)


# --- decode_base64_body ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def csr_der() -> bytes:
    return make_csr(encoding=Encoding.DER)


def test_base64_without_line_breaks(csr_der):
    assert est_codec.decode_base64_body(base64.b64encode(csr_der)) == csr_der


def test_base64_with_lf_line_breaks(csr_der):
    body = base64.encodebytes(csr_der)
    assert b"\n" in body.rstrip() and b"\r" not in body
    assert est_codec.decode_base64_body(body) == csr_der


def test_base64_with_crlf_line_breaks(csr_der):
    body = base64.encodebytes(csr_der).replace(b"\n", b"\r\n")
    assert est_codec.decode_base64_body(body) == csr_der


def test_base64_with_surrounding_whitespace(csr_der):
    assert est_codec.decode_base64_body(b"\r\n  " + base64.b64encode(csr_der) + b" \t\r\n\n") == csr_der


def test_raw_der_body_is_accepted(csr_der):
    assert est_codec.decode_base64_body(csr_der) == csr_der


def test_raw_der_with_long_form_length_is_accepted():
    der = core.OctetString(b"x" * 300).dump()
    der = b"\x30\x82" + len(der).to_bytes(2, "big") + der
    assert est_codec.decode_base64_body(der) == der


@pytest.mark.parametrize("body", [b"", b"   ", b"\r\n\r\n"])
def test_empty_body_is_malformed(body):
    assert _malformed(body) == "empty request body"


@pytest.mark.parametrize("body", [
    b"not base64!!",
    base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 10),          # '-' and '_' from the URL-safe alphabet
    b"TWE",                                                  # padding missing
    b"TWE==",                                                # too much padding
    b"TQ=",                                                  # truncated padding
    b"TQ==TWFu",                                             # data after padding
    b"TWF=",                                                 # non-zero pad bits (not canonical)
    b"=TWFu",
    b"TWFu\x00",
    "TWFu\u00e9".encode(),
])
def test_invalid_base64_is_malformed(body):
    assert _malformed(body) == "request body is not base64"


def test_urlsafe_fixture_really_uses_the_urlsafe_alphabet():
    text = base64.urlsafe_b64encode(b"\xfb\xff\xfe")
    assert b"-" in text and b"_" in text


def test_raw_der_with_trailing_bytes_is_malformed(csr_der):
    assert _malformed(csr_der + b"\x00") == "request body is not base64"
    assert _malformed(csr_der + b"\r\n") == "request body is not base64"


def test_truncated_raw_der_is_malformed(csr_der):
    assert _malformed(csr_der[:-1]) == "request body is not base64"


def test_raw_der_with_indefinite_or_non_minimal_length_is_malformed():
    assert _malformed(b"\x30\x80\x02\x01\x05\x00\x00") == "request body is not base64"
    assert _malformed(b"\x30\x81\x03\x02\x01\x05") == "request body is not base64"


def test_oversize_body_is_malformed():
    body = base64.b64encode(b"\x00" * (est_codec.MAX_BODY // 4 * 3 + 3))
    assert len(body) > est_codec.MAX_BODY
    assert "larger than" in _malformed(body)


# --- certs_only -----------------------------------------------------------------------------

def test_certs_only_structure_with_asn1crypto(chain):
    info = cms.ContentInfo.load(est_codec.certs_only(chain))
    assert info["content_type"].native == "signed_data"
    signed = info["content"]
    assert signed["version"].native == "v1"
    assert len(signed["digest_algorithms"]) == 0
    assert signed["encap_content_info"]["content_type"].native == "data"
    assert signed["encap_content_info"]["content"].native is None
    assert len(signed["signer_infos"]) == 0
    assert not signed["crls"]
    assert [c.chosen.dump() for c in signed["certificates"]] == [_der(c) for c in chain]


def test_certs_only_from_der_bytes_equals_from_objects_and_asn1crypto_reencodes_it(chain):
    message = est_codec.certs_only([_der(c) for c in chain])
    assert message == est_codec.certs_only(chain)
    ordered = est_codec.certs_only(sorted(_der(c) for c in chain))          # DER (SET OF sorted): as asn1crypto writes it
    assert cms.ContentInfo.load(ordered).dump(force=True) == ordered


def test_certs_only_keeps_the_given_order_even_when_not_sorted(chain):
    reordered = [chain[2], chain[0], chain[1]]
    info = cms.ContentInfo.load(est_codec.certs_only(reordered))
    assert [c.chosen.dump() for c in info["content"]["certificates"]] == [_der(c) for c in reordered]
    assert [_der(c) for c in chain] != sorted(_der(c) for c in chain)


def test_certs_only_in_der_sort_order_loads_with_cryptography_without_warning(chain):
    ordered = sorted(chain, key=_der)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = pkcs7.load_der_pkcs7_certificates(est_codec.certs_only(ordered))
    assert [_der(c) for c in loaded] == [_der(c) for c in ordered]


def test_certs_only_in_chain_order_loads_with_cryptography_through_its_ber_fallback(chain):
    # A SET OF outside DER sort order is valid BER (as written by openssl crl2pkcs7 and Go's
    # pkcs7); cryptography reads it with a warning that it may refuse it one day.
    with pytest.warns(UserWarning, match="falling back to parsing as BER"):
        loaded = pkcs7.load_der_pkcs7_certificates(est_codec.certs_only(chain))
    assert [_der(c) for c in loaded] == [_der(c) for c in chain]


def _openssl_print_certs(der: bytes) -> list[bytes]:
    out = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-print_certs"], input=der,
                         capture_output=True, check=True).stdout
    return [_der(c) for c in x509.load_pem_x509_certificates(out)]


@needs_openssl
def test_certs_only_with_openssl_print_certs(chain):
    assert _openssl_print_certs(est_codec.certs_only(chain)) == [_der(c) for c in chain]


@needs_openssl
def test_certs_only_base64_through_openssl_base64_decode(chain):
    text = est_codec.certs_only_base64(chain)
    der = subprocess.run(["openssl", "base64", "-d"], input=text, capture_output=True, check=True).stdout
    assert der == est_codec.certs_only(chain)
    assert _openssl_print_certs(der) == [_der(c) for c in chain]


def test_certs_only_base64_lines(chain):
    text = est_codec.certs_only_base64(chain)
    assert text.endswith(b"\n") and b"\r" not in text
    lines = text.split(b"\n")[:-1]
    assert all(len(line) == 64 for line in lines[:-1]) and 0 < len(lines[-1]) <= 64
    assert base64.b64decode(text) == est_codec.certs_only(chain)
    assert est_codec.decode_base64_body(text) == est_codec.certs_only(chain)


def test_certs_only_needs_a_certificate():
    with pytest.raises(ValueError):
        est_codec.certs_only([])


# --- csr_attributes -------------------------------------------------------------------------

class _Values(core.SetOf):
    _child_spec = core.Any


class _Attribute(core.Sequence):
    _fields = [("type", core.ObjectIdentifier), ("values", _Values)]


class _AttrOrOID(core.Choice):
    _alternatives = [("oid", core.ObjectIdentifier), ("attribute", _Attribute)]


class _CsrAttrs(core.SequenceOf):
    _child_spec = _AttrOrOID


EC_KEY, RSA_KEY = "1.2.840.10045.2.1", "1.2.840.113549.1.1.1"
P256, P384, P521 = "1.2.840.10045.3.1.7", "1.3.132.0.34", "1.3.132.0.35"
ECDSA_SHA256, ECDSA_SHA384 = "1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3"
RSA_SHA256 = "1.2.840.113549.1.1.11"


def _items(der: bytes) -> list[tuple]:
    """('oid', dotted) or ('attr', dotted type, [values]) for each element, in order."""
    parsed = _CsrAttrs.load(der)
    assert parsed.dump(force=True) == der
    out = []
    for item in parsed:
        if item.name == "oid":
            out.append(("oid", item.chosen.dotted))
        else:
            values = []
            for value in item.chosen["values"]:
                raw = value.dump()
                is_oid = raw[0] == 0x06
                values.append(core.ObjectIdentifier.load(raw).dotted if is_oid else core.Integer.load(raw).native)
            out.append(("attr", item.chosen["type"].dotted, values))
    return out


def test_csr_attributes_ec_p256():
    der = est_codec.csr_attributes(("ec:P-256",))
    assert _items(der) == [("attr", EC_KEY, [P256]), ("oid", ECDSA_SHA256)]
    assert der.hex() == "3021" "3015" "06072a8648ce3d0201" "310a" "06082a8648ce3d030107" "06082a8648ce3d040302"


def test_csr_attributes_ec_p384_matches_the_rfc_example_encoding():
    der = est_codec.csr_attributes(("ec:P-384",), "sha384")
    assert _items(der) == [("attr", EC_KEY, [P384]), ("oid", ECDSA_SHA384)]
    # RFC 7030 4.5.2 / RFC 9908 example: ecPublicKey {secp384r1} ... ecdsaWithSHA384
    assert bytes.fromhex("301206072a8648ce3d02013107 06052b81040022".replace(" ", "")) in der
    assert der.endswith(bytes.fromhex("06082a8648ce3d040303"))


def test_csr_attributes_ec_p384_with_default_hash():
    assert _items(est_codec.csr_attributes(("ec:P-384",))) == [("attr", EC_KEY, [P384]), ("oid", ECDSA_SHA256)]


def test_csr_attributes_rsa_3072():
    assert _items(est_codec.csr_attributes(("rsa:3072",))) == [("attr", RSA_KEY, [3072]), ("oid", RSA_SHA256)]


def test_csr_attributes_rsa_4096_matches_the_rfc_9908_example_encoding():
    # RFC 9908 "public key of a specific size", without the challengePassword OID.
    expected = "3011" "06092a864886f70d010101" "3104" "02021000" "06092a864886f70d01010b"
    assert est_codec.csr_attributes(("rsa:4096",)).hex() == "301e" + expected


def test_csr_attributes_mix_lists_each_key_type_in_policy_order():
    items = _items(est_codec.csr_attributes(("ec:P-256", "ec:P-384", "rsa:3072", "ec:P-521")))
    assert items == [
        ("attr", EC_KEY, [P256]), ("oid", ECDSA_SHA256),
        ("attr", EC_KEY, [P384]),
        ("attr", RSA_KEY, [3072]), ("oid", RSA_SHA256),
        ("attr", EC_KEY, [P521]),
    ]


def test_csr_attributes_empty_policy_is_an_empty_sequence():
    assert est_codec.csr_attributes(()) == b"\x30\x00"


def test_csr_attributes_never_ask_for_challenge_password():
    der = est_codec.csr_attributes(("ec:P-256", "rsa:3072"))
    assert bytes.fromhex("06092a864886f70d010907") not in der


@pytest.mark.parametrize("key_types, hash_name", [(("ed25519",), "sha256"), (("ec:P-192",), "sha256"),
                                                   (("rsa:big",), "sha256"), (("ec:P-256",), "sha1")])
def test_csr_attributes_rejects_unknown_names(key_types, hash_name):
    with pytest.raises(ValueError):
        est_codec.csr_attributes(key_types, hash_name)


def test_csr_attributes_base64_decodes_to_the_der():
    text = est_codec.csr_attributes_base64(("ec:P-256", "rsa:3072"), "sha384")
    assert text.endswith(b"\n") and b"\r" not in text
    assert base64.b64decode(text) == est_codec.csr_attributes(("ec:P-256", "rsa:3072"), "sha384")


@needs_openssl
def test_csr_attributes_with_openssl_asn1parse():
    der = est_codec.csr_attributes(("ec:P-256", "ec:P-384", "rsa:3072"))
    out = subprocess.run(["openssl", "asn1parse", "-inform", "DER"], input=der,
                         capture_output=True, check=True).stdout.decode()
    objects = [line.rsplit(":", 1)[1] for line in out.splitlines() if "OBJECT" in line]
    assert objects == ["id-ecPublicKey", "prime256v1", "ecdsa-with-SHA256", "id-ecPublicKey", "secp384r1",
                       "rsaEncryption", "sha256WithRSAEncryption"]
    integers = [line.rsplit(":", 1)[1] for line in out.splitlines() if "INTEGER" in line]
    assert integers == ["0C00"]


# --- serverkeygen multipart -----------------------------------------------------------------

@pytest.fixture(scope="module")
def keygen(chain):
    key = rsa.generate_private_key(65537, 2048)
    pkcs8 = key.private_bytes(Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    cert = _cert("lock-202", key, "mm Issuing", ec.generate_private_key(ec.SECP256R1()))
    body, content_type = est_codec.serverkeygen_multipart(pkcs8, cert)
    return key, pkcs8, cert, body, content_type


def test_serverkeygen_header_and_line_ends(keygen):
    _, _, _, body, content_type = keygen
    assert content_type.startswith("multipart/mixed; boundary=")
    boundary = content_type.split("boundary=", 1)[1]
    assert 1 <= len(boundary) <= 70
    assert body.startswith(b"--" + boundary.encode() + b"\r\n")
    assert body.endswith(b"--" + boundary.encode() + b"--\r\n")
    assert b"\n" not in body.replace(b"\r\n", b"")
    other = est_codec.serverkeygen_multipart(keygen[1], keygen[2])[1]
    assert other != content_type


def _check_cert_part(payload: bytes, cert: x509.Certificate) -> None:
    signed = cms.ContentInfo.load(payload)["content"]
    assert len(signed["signer_infos"]) == 0
    assert [c.chosen.dump() for c in signed["certificates"]] == [_der(cert)]


def test_serverkeygen_round_trip_through_own_parser(keygen):
    key, pkcs8, cert, body, content_type = keygen
    parts = est_codec.parse_multipart_mixed(body, content_type)
    assert len(parts) == 2
    (key_headers, key_der), (cert_headers, cert_der) = parts
    assert key_headers == {"content-type": "application/pkcs8", "content-transfer-encoding": "base64"}
    assert est_codec.media_type(cert_headers["content-type"]) == "application/pkcs7-mime"
    assert "smime-type=certs-only" in cert_headers["content-type"]
    assert key_der == pkcs8
    loaded = serialization.load_der_private_key(key_der, None)
    assert loaded.private_numbers() == key.private_numbers()
    _check_cert_part(cert_der, cert)


def test_serverkeygen_round_trip_through_python_email(keygen):
    key, pkcs8, cert, body, content_type = keygen
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    assert message.get_content_type() == "multipart/mixed"
    assert not message.defects
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["application/pkcs8", "application/pkcs7-mime"]
    assert parts[1].get_param("smime-type") == "certs-only"
    assert all(p["Content-Transfer-Encoding"] == "base64" and not p.defects for p in parts)
    key_der, cert_der = (p.get_content() for p in parts)
    assert key_der == pkcs8
    assert serialization.load_der_private_key(key_der, None).private_numbers() == key.private_numbers()
    _check_cert_part(cert_der, cert)
    assert [_der(c) for c in pkcs7.load_der_pkcs7_certificates(cert_der)] == [_der(cert)]


# --- parse_multipart_mixed edge cases -------------------------------------------------------

def test_parse_multipart_accepts_lf_quoted_boundary_preamble_and_epilogue():
    body = (b"preamble\n--b 1\nContent-Type: text/plain\n\nhello\n--b 1\n"
            b"Content-Type: application/pkcs8\nContent-Transfer-Encoding: BASE64\n\nTWFu\nTWFu\n--b 1--\nepilogue")
    parts = est_codec.parse_multipart_mixed(body, 'Multipart/Mixed; boundary="b 1"')
    assert parts == [({"content-type": "text/plain"}, b"hello"),
                     ({"content-type": "application/pkcs8", "content-transfer-encoding": "BASE64"}, b"ManMan")]


@pytest.mark.parametrize("body, content_type, message", [
    (b"--x\r\n\r\nabc\r\n--x--\r\n", "application/pkcs8", "not a multipart/mixed body"),
    (b"--x\r\n\r\nabc\r\n--x--\r\n", "multipart/mixed", "multipart body without a boundary parameter"),
    (b"--x\r\n\r\nabc\r\n--x\r\n\r\n", "multipart/mixed; boundary=x", "multipart body without a closing boundary"),
    (b"--x\r\nContent-Transfer-Encoding: base64\r\n\r\n!!\r\n--x--", "multipart/mixed; boundary=x",
     "multipart part is not valid base64"),
    (b"--x\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\na\r\n--x--", "multipart/mixed; boundary=x",
     "unsupported Content-Transfer-Encoding in multipart part"),
    (b"--x\r\nno colon here\r\n\r\na\r\n--x--", "multipart/mixed; boundary=x", "malformed header in multipart part"),
    (b"--xyz\r\n\r\na\r\n--x--", "multipart/mixed; boundary=x", "malformed multipart boundary line"),
    (b"--x\r\nContent-Type: a\r\n--x--", "multipart/mixed; boundary=x",
     "multipart part without a blank line after its headers"),
])
def test_parse_multipart_rejects(body, content_type, message):
    with pytest.raises(DeviceCAError) as info:
        est_codec.parse_multipart_mixed(body, content_type)
    assert info.value.kind is Kind.MALFORMED and str(info.value) == message


# --- media_type -----------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (None, ""),
    ("", ""),
    ("application/pkcs10", "application/pkcs10"),
    ("application/pkcs10; charset=x", "application/pkcs10"),
    ("Application/PKCS10;charset=utf-8", "application/pkcs10"),
    ("  application/pkcs7-mime ; smime-type=certs-only", "application/pkcs7-mime"),
    ("multipart/mixed; boundary=\"a;b\"", "multipart/mixed"),
])
def test_media_type(value, expected):
    assert est_codec.media_type(value) == expected
