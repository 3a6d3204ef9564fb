"""Request bodies read under a limit, however they are framed: a declared Content-Length over the
limit is refused before anything is read, and a chunked body (no Content-Length) is counted as it
arrives and refused the moment it passes the limit. Both are 413, never a truncated body.

werkzeug caps a chunked body at the limit silently (its stream just ends there): a 70 KiB EST body
reached the CSR parser cut at 64 KiB (400), and a batch over 64 MiB would have been issued cut short.
"""
from __future__ import annotations

import io

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge


def body_stream(limit: int):
    """The request body as a stream of at most ``limit`` bytes; RequestEntityTooLarge (413) as soon
    as the client sends more."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise RequestEntityTooLarge()
        return request.stream                     # werkzeug stops it at Content-Length
    environ = request.environ
    if "wsgi.input_terminated" not in environ:     # no length and no framing the server ends: nothing to read
        return io.BytesIO()
    return _Capped(environ["wsgi.input"], limit)


def read_body(limit: int) -> bytes:
    """The whole body (at most ``limit`` bytes; 413 beyond)."""
    stream = body_stream(limit)
    parts, total = [], 0
    while chunk := stream.read(min(65536, limit + 1 - total)):
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            raise RequestEntityTooLarge()
    return b"".join(parts)


class _Capped:
    """A chunked body, counted: reading past ``limit`` raises RequestEntityTooLarge."""

    def __init__(self, raw, limit: int):
        self._raw = raw
        self._limit = limit
        self._count = 0

    def _counted(self, data: bytes) -> bytes:
        self._count += len(data)
        if self._count > self._limit:
            raise RequestEntityTooLarge()
        return data

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._limit + 1 - self._count       # never unbounded: one byte past the limit tells
        return self._counted(self._raw.read(max(1, size)))

    def readline(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._limit + 1 - self._count
        return self._counted(self._raw.readline(max(1, size)))
