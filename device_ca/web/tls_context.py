"""The HTTPS listener's TLS context (RFC 8446 / RFC 5246): client certificates requested, not
required (CERT_OPTIONAL), verified against the client-CA bundle; TLS 1.2 at least; no session
tickets; sockets with a handshake deadline and an idle limit (tls_timeouts.py)."""
from __future__ import annotations

import os
import ssl

from device_ca.web.tls_timeouts import TimedSocket


def ssl_context_hook(handshake_timeout: float, idle_timeout: float, request_timeout: float = 5.0):
    """gunicorn's ``ssl_context`` hook: the context is built once per worker (gunicorn calls the
    hook for every connection, and building a context, CA bundle, key and chain parsed again,
    cost more than the handshake) and hands out ``TimedSocket``s (handshake deadline, idle limit).
    No TLS 1.3 session tickets: devices enroll on fresh connections and never resume, and issuing
    tickets costs about a third of each mutual-TLS handshake."""
    contexts: dict[int, ssl.SSLContext] = {}

    def context_for(config, default_ssl_context_factory):
        context = contexts.get(os.getpid())
        if context is None:
            context = default_ssl_context_factory()
            context.num_tickets = 0
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            TimedSocket.configure(context, handshake_timeout, idle_timeout, request_timeout)
            contexts[os.getpid()] = context
        return context
    return context_for
