"""The security headers of every console response (W3C CSP Level 3, RFC 7034, Fetch's nosniff).

The console runs no script and no inline style: its stylesheet is /console/static/console.css and
its charts are inline SVG with presentation attributes only, so the policy can deny everything
else. ``no-store``: pages show certificates and audit entries that must not linger in caches.
"""
from __future__ import annotations

from flask import Response

CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def secure(response: Response) -> Response:
    """Set the console's security headers, replacing any a view set."""
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response
