"""The plain-HTTP listener's front: an RSGI application (granian's native interface) on granian's
event loop that reads each request whole, under a deadline, before OCSP, the CRL or the Flask
application behind them sees it.

A client that trickles its body (``POST /ocsp`` with ``Content-Length: 60000`` and a byte every
few seconds) used to hold the worker's one blocking thread in ``wsgi.input.read`` and so silence
OCSP for everyone. Here waiting for a body is an await on the event loop: every other connection
is served meanwhile, and a body not complete within ``deadline`` seconds is answered 408 and the
connection closed (headers have the same deadline: granian's ``header_read_timeout``). A body over
``max_body`` bytes is 413, refused on its Content-Length or as soon as a chunked one passes it.
What runs then is synchronous and short (a cached answer in microseconds, a live signature in about
a millisecond), as it was on the single blocking thread before; the rare other paths (health,
metrics, CA files, the audit checkpoint) go to the Flask application through a WSGI call.
"""
from __future__ import annotations

import asyncio
import io
import logging
import sys

log = logging.getLogger("device_ca.web.front")

DEFAULT_DEADLINE = 5.0
_CLOSE = [("content-type", "text/plain"), ("connection", "close")]


class TooLarge(Exception):
    pass


class BufferingFront:
    def __init__(self, status, fallback, *, deadline: float = DEFAULT_DEADLINE, max_body: int = 64 * 1024):
        """``status``: the StatusApp (its ``handle``); ``fallback``: the WSGI application for every other path."""
        self.status = status
        self.fallback = fallback
        self.deadline = deadline
        self.max_body = max_body

    def __rsgi_init__(self, loop) -> None:
        pass

    def __rsgi_del__(self, loop) -> None:
        pass

    async def __rsgi__(self, scope, protocol) -> None:
        if scope.proto != "http":
            return
        headers = scope.headers
        body = b""
        if headers.get("content-length") not in (None, "0") or headers.get("transfer-encoding") is not None:
            try:
                async with asyncio.timeout(self.deadline):
                    body = await self._body(headers, protocol)
            except TimeoutError:
                protocol.response_bytes(408, _CLOSE, b"request not received in time\n")
                return
            except TooLarge:
                protocol.response_bytes(413, _CLOSE, f"request body larger than {self.max_body} bytes\n".encode())
                return
        method, path = scope.method, scope.path
        query = scope.query_string
        raw_path = f"{path}?{query}" if query else path
        reply = self.status.handle(method, path, raw_path, body, _address(scope.client))
        if reply is None:
            reply = self._wsgi(scope, body)
        status, reply_headers, data = reply
        protocol.response_bytes(status, list(reply_headers), data)

    async def _body(self, headers, protocol) -> bytes:
        declared = headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_body:
                    raise TooLarge()
            except ValueError:
                pass
            else:
                return await protocol()
        parts, size = [], 0
        async for chunk in protocol:                     # chunked: counted as it arrives
            size += len(chunk)
            if size > self.max_body:
                raise TooLarge()
            parts.append(chunk)
        return b"".join(parts)

    def _wsgi(self, scope, body: bytes):
        environ = _environ(scope, body)
        started: list = []

        def start_response(status, headers, exc_info=None):
            started[:] = [status, headers]

        result = self.fallback(environ, start_response)
        try:
            data = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        return int(status.split(" ", 1)[0]), headers, data


def _address(client: str) -> str:
    host, sep, _ = client.rpartition(":")
    return host.strip("[]") if sep else client


def _environ(scope, body: bytes) -> dict:
    server_host, _, server_port = scope.server.rpartition(":")
    environ = {
        "REQUEST_METHOD": scope.method, "SCRIPT_NAME": "", "PATH_INFO": scope.path,
        "QUERY_STRING": scope.query_string, "RAW_URI": scope.path,
        "SERVER_NAME": server_host, "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}", "REMOTE_ADDR": _address(scope.client),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0), "wsgi.url_scheme": scope.scheme, "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    for name, value in scope.headers.items():
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif key != "CONTENT_LENGTH":
            environ["HTTP_" + key] = value
    return environ
