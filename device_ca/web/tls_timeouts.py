"""Idle TLS connections on the HTTPS listener: a handshake has a deadline, a connection a silence limit.

gunicorn's threaded worker serves each connection on a thread in blocking mode, without a
timeout: a client that sends half a ClientHello, or half a request, and then nothing keeps that
thread forever, and ``--workers x --threads`` such clients (8 by default) stop the EST server.
``TimedSocket`` is the ``ssl.SSLSocket`` the listener's context hands out (``sslsocket_class``):

- the handshake must be over within ``handshake_timeout`` seconds, however slowly the client
  sends it (the handshake runs non-blocking against that deadline);
- after it, "blocking" means blocking for at most ``idle_timeout`` seconds per read or write:
  gunicorn switches sockets to blocking for every request, and that switch keeps the limit;
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


class TimedSocket(ssl.SSLSocket):
    handshake_timeout: float = 10.0
    idle_timeout: float = 15.0

    @classmethod
    def configure(cls, context: ssl.SSLContext, handshake_timeout: float, idle_timeout: float) -> None:
        """Make ``context.wrap_socket`` hand out TimedSockets with these limits."""
        context.sslsocket_class = type("TimedSocket", (cls,), {"handshake_timeout": handshake_timeout,
                                                                "idle_timeout": idle_timeout})

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
        try:
            return super().recv(buflen, flags)
        except TimeoutError:
            if self._sslobj is not None:           # not gunicorn's drain after its shutdown
                self._drop(f"nothing received for {self.idle_timeout:g} s")
            return b""

    def send(self, data, flags: int = 0) -> int:          # ssl.SSLSocket.sendall sends through here
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
