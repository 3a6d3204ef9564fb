"""Slow TLS connections on the HTTPS listener: a handshake and a request have deadlines, a connection a silence limit.

gunicorn's threaded worker serves each connection on a thread in blocking mode, without a
timeout: a client that sends half a ClientHello, or half a request, and then nothing keeps that
thread forever, and ``--workers x --threads`` such clients (8 by default) stop the EST server.
``TimedSocket`` is the ``ssl.SSLSocket`` the listener's context hands out (``sslsocket_class``):

- the handshake must be over within ``handshake_timeout`` seconds, however slowly the client
  sends it (the handshake runs non-blocking against that deadline);
- after it, "blocking" means blocking for at most ``idle_timeout`` seconds per read or write:
  gunicorn switches sockets to blocking for every request, and that switch keeps the limit;
- a request (headers and body) must arrive within ``request_timeout`` seconds of its first byte,
  extended by one second for every ``MIN_RATE`` bytes received (as Apache's mod_reqtimeout), so a
  client trickling a byte now and then holds its thread for seconds, not for as long as it
  likes, while a large batch upload at a real rate goes on; the clock starts again after each
  response;
- a peer silent for that long is treated as gone: the socket is closed here (one INFO line),
  a read then returns end-of-stream and a write fails as a broken pipe, which gunicorn takes as
  a client that left (no traceback, and no two-second wait in its graceful close, which would
  hold the thread that accepts connections).
"""
from __future__ import annotations

import errno
import logging
import select
import ssl
import time

log = logging.getLogger("device_ca.serve")


MIN_RATE = 64 * 1024                 # bytes a second that extend a request's deadline by a second


class TimedSocket(ssl.SSLSocket):
    handshake_timeout: float = 10.0
    idle_timeout: float = 15.0
    request_timeout: float = 5.0
    _request_started: float | None = None
    _request_bytes: int = 0

    @classmethod
    def configure(cls, context: ssl.SSLContext, handshake_timeout: float, idle_timeout: float,
                  request_timeout: float = 5.0) -> None:
        """Make ``context.wrap_socket`` hand out TimedSockets with these limits."""
        context.sslsocket_class = type("TimedSocket", (cls,), {"handshake_timeout": handshake_timeout,
                                                                "idle_timeout": idle_timeout,
                                                                "request_timeout": request_timeout})

    def do_handshake(self, block: bool = False) -> None:
        deadline = time.monotonic() + self.handshake_timeout
        super().settimeout(0.0)
        try:
            while True:
                try:
                    return super().do_handshake()
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                remaining = deadline - time.monotonic()
                poller = select.poll()
                poller.register(self.fileno(), events | select.POLLERR | select.POLLHUP)
                if remaining <= 0 or not poller.poll(remaining * 1000):
                    self._drop(f"TLS handshake not finished within {self.handshake_timeout:g} s")
                    raise OSError(errno.ENOTCONN, "TLS handshake timed out")
        finally:
            if self.fileno() >= 0:
                super().settimeout(self.idle_timeout)

    def setblocking(self, flag: bool) -> None:
        if self.fileno() >= 0:                      # gunicorn's close after _drop
            super().settimeout(self.idle_timeout if flag else 0.0)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        blocking = self.gettimeout() != 0.0
        if blocking and self._sslobj is not None:
            now = time.monotonic()
            if self._request_started is None:
                self._request_started, self._request_bytes = now, 0
            left = self._request_started + self.request_timeout + self._request_bytes / MIN_RATE - now
            if left <= 0:
                self._drop(f"request not received within {self.request_timeout:g} s")
                return b""
            super().settimeout(min(self.idle_timeout, left))
        try:
            data = super().recv(buflen, flags)
        except TimeoutError:
            if self._sslobj is not None:           # not gunicorn's drain after its shutdown
                late = self._request_started is not None and time.monotonic() - self._request_started \
                    >= self.request_timeout + self._request_bytes / MIN_RATE
                self._drop(f"request not received within {self.request_timeout:g} s" if late
                           else f"nothing received for {self.idle_timeout:g} s")
            return b""
        self._request_bytes += len(data)
        return data

    def send(self, data, flags: int = 0) -> int:          # ssl.SSLSocket.sendall sends through here
        self._request_started = None                     # answering: the next request has a clock of its own
        if self.fileno() >= 0 and self.gettimeout() != 0.0:
            super().settimeout(self.idle_timeout)
        try:
            return super().send(data, flags)
        except TimeoutError:
            self._drop(f"response not taken for {self.idle_timeout:g} s")
            raise BrokenPipeError(errno.EPIPE, "client stopped reading") from None

    def _drop(self, why: str) -> None:
        try:
            peer = self.getpeername()[0]
        except OSError:
            peer = "?"
        log.info("TLS connection from %s closed: %s", peer, why)
        self.close()
