"""The HTTPS listener's TLS context (RFC 8446 / RFC 5246): client certificates requested, not
required (CERT_OPTIONAL), verified against the client-CA bundle during the handshake; TLS 1.2 at
least; no session tickets (devices enroll on fresh connections and never resume, and issuing
tickets costs about a third of each mutual-TLS handshake). Deadlines are the front's (front.py)."""
from __future__ import annotations

import ssl
from pathlib import Path


def server_context(cert: Path, key: Path, client_cas: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_cas))
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    context.verify_mode = ssl.CERT_OPTIONAL
    context.num_tickets = 0
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
