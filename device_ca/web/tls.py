"""Who is on the other end: the verified TLS client certificate, from the socket or from a proxy.

The listener's TLS context (CERT_OPTIONAL, the client-CA bundle) verifies the client chain during
the handshake, and the front passes the peer's certificate on as ``environ["device_ca.peer_der"]``
(DER, None without one). Behind nginx the
verified certificate arrives URL-encoded PEM in a configured header (nginx's
``$ssl_client_escaped_cert``); that header is believed only from a proxy that proves it is one:
by presenting, on its own TLS connection to device-ca, a good certificate of this CA whose policy
authorises ``proxy`` (nginx ``proxy_ssl_certificate``), or, weaker, by connecting from a
configured address (``--trusted-proxy``: any local process shares it). From a proxy the socket's
own certificate is never used as the caller's.
"""
from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

from cryptography import x509

log = logging.getLogger("device_ca.web")


@dataclass(frozen=True)
class ProxySettings:
    trusted: frozenset[str] = field(default_factory=frozenset)
    header: str | None = None        # e.g. "X-SSL-Client-Cert"
    # whether a peer certificate proves a proxy (a good one of this CA authorising "proxy")
    proves_proxy: Callable[[x509.Certificate], bool] | None = None


def from_proxy(environ: dict, proxies: ProxySettings) -> bool:
    """Does the request come through a front proxy (its certificate proves it, or its address is
    trusted)? Only then are its client-certificate and X-Forwarded-For headers believed."""
    if environ.get("REMOTE_ADDR", "") in proxies.trusted:
        return True
    if proxies.proves_proxy is None or proxies.header is None:     # no header to pass on: no proof asked
        return False
    peer = _peer_certificate(environ)
    return peer is not None and proxies.proves_proxy(peer)


def client_certificate(environ: dict, proxies: ProxySettings) -> x509.Certificate | None:
    remote = environ.get("REMOTE_ADDR", "")
    key = "HTTP_" + proxies.header.upper().replace("-", "_") if proxies.header else None
    if key and from_proxy(environ, proxies):
        value = environ.get(key, "")
        if not value:
            return None
        try:
            return x509.load_pem_x509_certificate(urllib.parse.unquote(value).encode())
        except ValueError:
            log.warning("proxy %s sent an unreadable client certificate header", remote)
            return None
    if key and environ.get(key):
        log.warning("ignoring client certificate header from %s: not a proxy", remote)
    return _peer_certificate(environ)


_PEER = "device_ca.peer_certificate"


def _peer_certificate(environ: dict) -> x509.Certificate | None:
    """The TLS peer's certificate, parsed once per request (the rate limit, the proxy proof and
    the caller's identity all ask for it)."""
    if _PEER in environ:
        return environ[_PEER]
    der = environ.get("device_ca.peer_der")
    environ[_PEER] = x509.load_der_x509_certificate(der) if der else None
    return environ[_PEER]
