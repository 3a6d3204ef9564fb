"""Wire encodings of EST (RFC 7030 as updated by RFC 8951): pure functions, no web framework.

- Request bodies (4.2.1, 4.4.1): base64 of DER. RFC 8951 deprecates the
  Content-Transfer-Encoding header (it is not an HTTP header) and says receivers MUST tolerate
  white space, CR and LF included, while senders need not insert any. So the header is
  ignored, any line breaks and surrounding white space are accepted, and the base64 itself
  is checked strictly (RFC 4648 alphabet, padding, canonical encoding).
- certs-only responses (4.1.3 /cacerts, 4.2.3 /simpleenroll): a degenerate CMS SignedData
  (RFC 5652 5.1, no signers, eContent absent), base64 with LF line breaks every 64 characters.
- /csrattrs (4.5.2, clarified by RFC 9908): DER ``CsrAttrs``, base64 the same way.
- /serverkeygen (4.4.2): a multipart/mixed body with an application/pkcs8 part and a certs-only
  part, each carrying the MIME part header ``Content-Transfer-Encoding: base64`` (a MIME body
  part header, where it is meaningful, as in the RFC 7030 A.4 example).

Errors from client input raise ``DeviceCAError`` of kind MALFORMED with a one-line message.
"""
from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterable

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca.ca.der import tlv
from device_ca.errors import malformed

MAX_BODY = 64 * 1024

_WHITESPACE = re.compile(rb"[ \t\r\n]+")
_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_BASE64_LINE = 64

_EC_CURVES = {"P-256": "1.2.840.10045.3.1.7", "P-384": "1.3.132.0.34", "P-521": "1.3.132.0.35"}
_EC_SIGNATURES = {"sha256": "1.2.840.10045.4.3.2", "sha384": "1.2.840.10045.4.3.3", "sha512": "1.2.840.10045.4.3.4"}
_RSA_SIGNATURES = {"sha256": "1.2.840.113549.1.1.11", "sha384": "1.2.840.113549.1.1.12",
                   "sha512": "1.2.840.113549.1.1.13"}
ID_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"


class _AttributeValues(core.SetOf):
    _child_spec = core.Any


class _Attribute(core.Sequence):
    _fields = [("type", core.ObjectIdentifier), ("values", _AttributeValues)]


class _AttrOrOID(core.Choice):
    _alternatives = [("oid", core.ObjectIdentifier), ("attribute", _Attribute)]


class CsrAttrs(core.SequenceOf):
    """``CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID`` (RFC 7030 4.5.2 as corrected by RFC 8951)."""

    _child_spec = _AttrOrOID


# ContentInfo { signedData, [0] SignedData { v1, no digest algorithms, encapContentInfo { id-data },
# certificates [0] IMPLICIT ..., no signerInfos } } (RFC 5652 §3, §5.1), as DER around the certificates.
_SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")
_SIGNED_DATA_HEAD = bytes.fromhex("020101" "3100" "300b06092a864886f70d010701")
_NO_SIGNERS = bytes.fromhex("3100")


def media_type(content_type: str | None) -> str:
    """``"Application/PKCS10; charset=x"`` -> ``"application/pkcs10"``; ``None`` -> ``""``."""
    if content_type is None:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _is_single_der_tlv(data: bytes) -> bool:
    """True when ``data`` is one SEQUENCE with a definite, minimal length covering all of it."""
    if len(data) < 2 or data[0] != 0x30:
        return False
    first = data[1]
    if first < 0x80:
        return 2 + first == len(data)
    count = first & 0x7F
    if count == 0 or count > 4 or len(data) < 2 + count or data[2] == 0:
        return False
    length = int.from_bytes(data[2:2 + count], "big")
    return length >= 0x80 and 2 + count + length == len(data)


def _strict_b64decode(text: bytes) -> bytes | None:
    compact = _WHITESPACE.sub(b"", text)
    if not compact or not _BASE64.fullmatch(compact):
        return None
    decoded = base64.b64decode(compact, validate=True)
    return decoded if base64.b64encode(decoded) == compact else None


def decode_base64_body(body: bytes) -> bytes:
    """The DER carried by an EST request body.

    Accepted: base64 (RFC 4648 alphabet, padded, canonical) with or without CRLF or LF line
    breaks and white space anywhere, as RFC 8951 asks receivers to tolerate. Also accepted,
    as a deliberate leniency for clients that post binary: a body that is exactly one DER
    SEQUENCE (first octet 0x30, definite minimal length equal to the body). A body made only
    of base64 characters is always read as base64: real DER of a CSR always holds octets
    outside that alphabet, so the two readings cannot be confused.
    """
    if not body or not body.strip(b" \t\r\n"):
        raise malformed("empty request body")
    if len(body) > MAX_BODY:
        raise malformed(f"request body larger than {MAX_BODY} bytes")
    decoded = _strict_b64decode(body)
    if decoded is not None:
        return decoded
    if _is_single_der_tlv(body):
        return bytes(body)
    raise malformed("request body is not base64")


def _wrap_base64(der: bytes, eol: bytes = b"\n") -> bytes:
    text = base64.b64encode(der)
    return b"".join(text[i:i + _BASE64_LINE] + eol for i in range(0, len(text), _BASE64_LINE))


def certs_only(certificates: Iterable[x509.Certificate | bytes]) -> bytes:
    """A certs-only CMS SignedData (RFC 7030 4.1.3, RFC 5652 5.1) holding ``certificates`` (objects
    or DER) in the given order.

    version 1, no digest algorithms, encapContentInfo id-data without eContent, no CRLs, no
    signers. ``[0] IMPLICIT CertificateSet`` is written in the caller's order, as ``openssl
    crl2pkcs7`` and Go's pkcs7 do: valid BER (CMS is BER, and nothing here is signed), strict DER
    only when the certificates come in DER sort order; cryptography's
    ``load_der_pkcs7_certificates`` reads other orders through its BER fallback, with a warning.
    Written as DER around the certificates' bytes: a dozen microseconds instead of asn1crypto's
    few hundred.
    """
    ders = [c if isinstance(c, bytes) else c.public_bytes(Encoding.DER) for c in certificates]
    if not ders:
        raise ValueError("a certs-only message needs at least one certificate")
    signed_data = tlv(0x30, _SIGNED_DATA_HEAD + tlv(0xA0, b"".join(ders)) + _NO_SIGNERS)
    return tlv(0x30, _SIGNED_DATA_OID + tlv(0xA0, signed_data))


def certs_only_base64(certificates: Iterable[x509.Certificate | bytes]) -> bytes:
    """``certs_only`` as base64 in lines of 64 characters ending in LF: RFC 8951 receivers, Go's
    decoder, ``openssl base64 -d``, Python and GNU ``base64 -d`` (which refuses CR) all read it."""
    return _wrap_base64(certs_only(certificates))


def csr_attributes(key_types: tuple[str, ...], hash_name: str = "sha256") -> bytes:
    """DER ``CsrAttrs`` telling clients which keys and signature algorithm the policy accepts.

    For each policy key type, in policy order (the first is the preferred one):

    - ``ec:<curve>``: Attribute { id-ecPublicKey, { namedCurve OID } } (secp256r1, secp384r1
      or secp521r1), then the OID ecdsa-with-SHA256/384/512 for ``hash_name``;
    - ``rsa:<bits>``: Attribute { rsaEncryption, { INTEGER bits } }, then the OID
      sha256/384/512WithRSAEncryption.

    This is the form of the RFC 7030 4.5.2 example (ecPublicKey with secp384r1, then
    ecdsaWithSHA384) and of the RFC 9908 (draft-ietf-lamps-rfc7030-csrattrs) examples
    "public key of a specific size" (rsaEncryption with INTEGER 4096, then
    sha256WithRSAEncryption) and "of a specific curve". A policy with a
    single key type yields exactly one key attribute, as RFC 9908 (section 3.2) asks; a policy
    allowing several lists each one, since the format has no other way to offer alternatives,
    and each signature OID appears once. An empty ``key_types`` gives an empty SEQUENCE,
    which RFC 7030 defines as "no specific requirements".

    The challengePassword OID is left out on purpose: RFC 7030 3.5 and 4.5.2 use it to ask
    the client to put the TLS tls-unique value in the CSR, and this server does no channel
    binding (Python's ssl has no tls-exporter and tls-unique means nothing on TLS 1.3), so
    asking for it would promise a check that is not made.

    Unknown key types or hash names are configuration errors and raise ``ValueError``.
    """
    if hash_name not in _EC_SIGNATURES:
        raise ValueError(f"unsupported signature hash {hash_name!r}")
    items: list[_AttrOrOID] = []
    signature_oids: list[str] = []
    for key_type in key_types:
        family, _, parameter = key_type.partition(":")
        if family == "ec" and parameter in _EC_CURVES:
            key_oid, signature = ID_EC_PUBLIC_KEY, _EC_SIGNATURES[hash_name]
            value: core.Asn1Value = core.ObjectIdentifier(_EC_CURVES[parameter])
        elif family == "rsa" and parameter.isdigit() and int(parameter) >= 1024:
            key_oid, signature = RSA_ENCRYPTION, _RSA_SIGNATURES[hash_name]
            value = core.Integer(int(parameter))
        else:
            raise ValueError(f"unsupported key type {key_type!r}")
        attribute = _Attribute({"type": key_oid, "values": [core.Any.load(value.dump())]})
        items.append(_AttrOrOID(name="attribute", value=attribute))
        if signature not in signature_oids:
            signature_oids.append(signature)
            items.append(_AttrOrOID(name="oid", value=core.ObjectIdentifier(signature)))
    return CsrAttrs(items).dump()


def csr_attributes_base64(key_types: tuple[str, ...], hash_name: str = "sha256") -> bytes:
    """``csr_attributes`` as base64 in LF-terminated lines of 64 characters."""
    return _wrap_base64(csr_attributes(key_types, hash_name))


def serverkeygen_multipart(private_key_pkcs8_der: bytes, certificate: x509.Certificate) -> tuple[bytes, str]:
    """The RFC 7030 4.4.2 response body and its ``Content-Type`` header value.

    Part one is the unencrypted PKCS#8 PrivateKeyInfo (``application/pkcs8``), part two the
    certs-only message holding the new certificate (``application/pkcs7-mime;
    smime-type=certs-only``), both base64 with CRLF line ends; the boundary is random.
    """
    if not private_key_pkcs8_der:
        raise ValueError("empty private key")
    boundary = "est-" + secrets.token_hex(16)
    delimiter = b"--" + boundary.encode("ascii")
    parts = (
        (b"application/pkcs8", private_key_pkcs8_der),
        (b"application/pkcs7-mime; smime-type=certs-only", certs_only([certificate])),
    )
    body = b"".join(
        delimiter + b"\r\nContent-Type: " + part_type + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + _wrap_base64(payload, b"\r\n")
        for part_type, payload in parts
    )
    return body + delimiter + b"--\r\n", f"multipart/mixed; boundary={boundary}"


def _boundary(content_type: str) -> str:
    match = re.search(r';\s*boundary\s*=\s*(?:"([^"]{1,70})"|([^;\s"]{1,70}))', content_type, re.IGNORECASE)
    if not match:
        raise malformed("multipart body without a boundary parameter")
    return match.group(1) or match.group(2)


def _parse_part(raw: bytes) -> tuple[dict[str, str], bytes]:
    blank = re.match(rb"\r?\n", raw) or re.search(rb"\r?\n\r?\n", raw)
    if blank is None:
        raise malformed("multipart part without a blank line after its headers")
    head, payload = raw[:blank.start()], raw[blank.end():]
    headers: dict[str, str] = {}
    name = None
    for line in re.split(rb"\r?\n", head) if head else []:
        if line[:1] in (b" ", b"\t") and name is not None:
            headers[name] += " " + line.strip().decode("ascii", "replace")
            continue
        field, colon, value = line.partition(b":")
        if not colon or not field.strip():
            raise malformed("malformed header in multipart part")
        name = field.strip().decode("ascii", "replace").lower()
        headers[name] = value.strip().decode("ascii", "replace")
    encoding = headers.get("content-transfer-encoding", "").lower()
    if encoding == "base64":
        decoded = _strict_b64decode(payload)
        if decoded is None:
            raise malformed("multipart part is not valid base64")
        return headers, decoded
    if encoding in ("", "7bit", "8bit", "binary"):
        return headers, payload
    raise malformed("unsupported Content-Transfer-Encoding in multipart part")


def parse_multipart_mixed(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/mixed body (RFC 2046 5.1) into (lower-cased headers, decoded payload).

    CRLF or bare LF line ends are accepted; preamble and epilogue are ignored; a part with
    ``Content-Transfer-Encoding: base64`` is decoded, one without it is returned as is.
    """
    if media_type(content_type) != "multipart/mixed":
        raise malformed("not a multipart/mixed body")
    delimiter = b"--" + _boundary(content_type).encode("ascii", "replace")
    pieces = re.split(rb"\r?\n" + re.escape(delimiter), b"\n" + body)
    parts: list[tuple[dict[str, str], bytes]] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            return parts
        line_end = piece.find(b"\n")
        if line_end < 0 or piece[:line_end].strip(b" \t\r"):
            raise malformed("malformed multipart boundary line")
        parts.append(_parse_part(piece[line_end + 1:]))
    raise malformed("multipart body without a closing boundary")
