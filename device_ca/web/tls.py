"""Who is on the other end: the verified TLS client certificate, from the socket or from a proxy.

gunicorn (with ``cert_reqs`` = CERT_OPTIONAL and ``ca_certs``) verifies the client chain during
the handshake and exposes the socket as ``environ["gunicorn.socket"]``. Behind nginx the
verified certificate arrives URL-encoded PEM in a configured header (nginx's
``$ssl_client_escaped_cert``); that header is believed only from configured proxy addresses,
and from those addresses the socket's own certificate is never used.
"""
from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field

from cryptography import x509

log = logging.getLogger("device_ca.web")


@dataclass(frozen=True)
class ProxySettings:
    trusted: frozenset[str] = field(default_factory=frozenset)
    header: str | None = None        # e.g. "X-SSL-Client-Cert"


def client_certificate(environ: dict, proxies: ProxySettings) -> x509.Certificate | None:
    remote = environ.get("REMOTE_ADDR", "")
    key = "HTTP_" + proxies.header.upper().replace("-", "_") if proxies.header else None
    if key and remote in proxies.trusted:
        value = environ.get(key, "")
        if not value:
            return None
        try:
            return x509.load_pem_x509_certificate(urllib.parse.unquote(value).encode())
        except ValueError:
            log.warning("proxy %s sent an unreadable client certificate header", remote)
            return None
    if key and environ.get(key):
        log.warning("ignoring client certificate header from untrusted address %s", remote)
    sock = environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    der = getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None
