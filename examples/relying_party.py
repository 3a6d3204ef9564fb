"""A protected resource that trusts device tokens from Keycloak, the way an API in front of devices
should (RFC 8705 §3: certificate-bound access tokens):

- the request comes over mutual TLS with a certificate of the device CA (the TLS layer checks the chain);
- `Authorization: Bearer <token>`: a JWT signed by a key of the realm (its JWKS), not expired,
  issued by the realm, with this resource's name in `aud`;
- `cnf.x5t#S256` in the token equals the SHA-256 thumbprint of the certificate on this connection:
  a token stolen from one device is worthless with another device's certificate;
- with `--introspect-secret-file`, the token is also introspected (RFC 7662): a device revoked
  since the token was issued is refused at once, not only when the token expires.

    python3 examples/relying_party.py --realm-url https://127.0.0.1:18443/realms/smart-building \\
        --realm-ca .cache/keycloak-run/tls/server.pem --audience building-api \\
        --cert server.pem --key server.key --client-cas chain.pem --port 9443

GET /door/open answers 200 with the device's id, 401 otherwise (with the reason).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import ssl
import time
import urllib.parse
import urllib.request

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from flask import Flask, jsonify, request


def b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _int(data: str) -> int:
    return int.from_bytes(b64url(data), "big")


class Realm:
    """The realm's signing keys (JWKS, fetched again for an unknown key id) and, optionally, introspection."""

    def __init__(self, url: str, audience: str, introspect: tuple[str, str] | None = None,
                 ca_file: str | None = None):
        self.url = url.rstrip("/")                  # also the issuer: use the URL devices get tokens from
        self.audience = audience
        self.introspect_as = introspect
        self.keys: dict[str, object] = {}
        self.context = ssl.create_default_context(cafile=ca_file) if self.url.startswith("https:") else None

    def _fetch_keys(self) -> None:
        with urllib.request.urlopen(f"{self.url}/protocol/openid-connect/certs", timeout=10,
                                    context=self.context) as r:
            for jwk in json.load(r)["keys"]:
                if jwk.get("use", "sig") != "sig":
                    continue
                if jwk["kty"] == "RSA":
                    self.keys[jwk["kid"]] = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
                elif jwk["kty"] == "EC":
                    curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[jwk["crv"]]
                    self.keys[jwk["kid"]] = ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]),
                                                                          curve).public_key()

    def verify(self, token: str) -> dict:
        """The token's claims if it is good for this resource; ValueError with the reason otherwise."""
        try:
            head_b64, body_b64, signature_b64 = token.split(".")
            header, claims = json.loads(b64url(head_b64)), json.loads(b64url(body_b64))
        except ValueError:
            raise ValueError("not a JWT") from None
        if header.get("kid") not in self.keys:
            self._fetch_keys()
        key = self.keys.get(header.get("kid"))
        alg = header.get("alg")
        signed, signature = f"{head_b64}.{body_b64}".encode(), b64url(signature_b64)
        try:
            if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            elif alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
                half = len(signature) // 2
                key.verify(encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                                int.from_bytes(signature[half:], "big")), signed,
                           ec.ECDSA(hashes.SHA256()))
            else:
                raise ValueError(f"unexpected algorithm {alg!r} or unknown key")
        except InvalidSignature:
            raise ValueError("bad signature") from None
        if claims.get("iss") != self.url:
            raise ValueError("issued by another realm")
        if claims.get("exp", 0) <= time.time():
            raise ValueError("expired")
        audience = claims.get("aud")
        if self.audience not in (audience if isinstance(audience, list) else [audience]):
            raise ValueError(f"not meant for {self.audience}")
        if self.introspect_as is not None and not self._active(token):
            raise ValueError("no longer active (revoked device)")
        return claims

    def _active(self, token: str) -> bool:
        client_id, secret = self.introspect_as
        body = urllib.parse.urlencode({"token": token, "client_id": client_id, "client_secret": secret}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}/protocol/openid-connect/token/introspect",
                                                           body), timeout=10, context=self.context) as r:
            return json.load(r).get("active") is True


def thumbprint(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def create_app(realm: Realm) -> Flask:
    app = Flask("relying-party")

    @app.get("/door/open")
    def open_door():
        peer = request.environ.get("SSL_CLIENT_CERT")          # werkzeug: the verified client certificate
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if not peer:
            return jsonify(error="a device certificate is required"), 401
        if scheme.lower() != "bearer" or not token:
            return jsonify(error="a bearer token is required"), 401
        try:
            claims = realm.verify(token)
        except ValueError as exc:
            return jsonify(error=str(exc)), 401
        if claims.get("cnf", {}).get("x5t#S256") != thumbprint(peer):
            return jsonify(error="the token is bound to another certificate"), 401
        return jsonify(opened_for=claims.get("device_id"), serial=claims.get("cert_serial"))

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--realm-url", required=True, help="the realm's URL as in the tokens' iss")
    parser.add_argument("--realm-ca", help="PEM to verify an https realm URL")
    parser.add_argument("--audience", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-cas", required=True, help="PEM: the device CA chain")
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--introspect-secret-file", help="file with the client secret of --audience, to introspect")
    args = parser.parse_args()
    introspect = None
    if args.introspect_secret_file:
        with open(args.introspect_secret_file) as f:
            introspect = (args.audience, f.read().strip())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=args.client_cas)
    context.load_cert_chain(args.cert, args.key)
    context.verify_mode = ssl.CERT_REQUIRED
    create_app(Realm(args.realm_url, args.audience, introspect, args.realm_ca)).run("127.0.0.1", args.port, ssl_context=context)


if __name__ == "__main__":
    main()
