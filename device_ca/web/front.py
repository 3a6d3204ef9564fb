"""Both listeners' front: an event loop (uvloop) in each worker process that reads every request
whole, under a deadline, before anything answers it, as nginx does in front of an application.

Slow clients used to hold what serves everyone: a trickled OCSP body held the HTTP worker's one
blocking thread in ``wsgi.input.read``, and TLS clients trickling their headers held gunicorn's
threads, one each. Here a connection that is still sending costs a few hundred bytes on the loop,
never a thread:

- the TLS handshake (HTTPS) must be over within ``handshake_timeout`` seconds;
- a request, request line, headers and body, must arrive within ``Limits.deadline`` seconds of
  its first byte, extended by a second for every ``MIN_RATE`` bytes received (Apache's
  mod_reqtimeout: a batch upload at a real rate goes on, a byte now and then does not); past it
  the client gets 408 and the connection is closed;
- between requests a keep-alive connection may stay silent for ``Limits.idle`` seconds;
- request line and headers are at most ``max_header`` bytes and ``max_fields`` fields (431), a
  body at most ``max_body(path)`` bytes (413, on its Content-Length or as soon as a chunked one
  passes it); a body over ``SPOOL_BYTES`` waits in a temporary file, not in memory.

A complete request then goes to the ``Site``: ``inline`` answers on the loop what is short and
never waits (OCSP and CRLs from the caches, StatusApp.handle); everything else is a WSGI call on
one of the worker's ``threads`` threads (the EST and batch API Flask app, health, metrics, CA
files). The verified TLS client certificate reaches the WSGI app as ``environ["device_ca.peer_der"]``.

``LoopWorker`` is the gunicorn worker class that runs it: gunicorn keeps the processes (forks
them after the listening sockets are bound, starts them again when they die, stops them).
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import email.utils
import http
import io
import logging
import os
import resource
import signal
import socket
import ssl
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

import httptools
from gunicorn.workers.base import Worker

log = logging.getLogger("device_ca.web.front")

MIN_RATE = 64 * 1024          # bytes a second that extend a request's deadline by a second
SPOOL_BYTES = 1 << 20         # bodies larger than this wait in a temporary file
SWEEP_SECONDS = 0.25          # how often deadlines are checked

Reply = tuple[int, "list[tuple[str, str]] | tuple[tuple[str, str], ...]", bytes]


@dataclass(frozen=True)
class Limits:
    deadline: float = 5.0                         # seconds for a whole request (+1 s per MIN_RATE bytes)
    idle: float = 15.0                            # seconds a connection may be silent between requests
    max_header: int = 16 * 1024                   # bytes of request line and header fields
    max_fields: int = 50
    max_body: Callable[[str], int] = lambda path: 64 * 1024     # by path


@dataclass
class Site:
    """What a listener serves: ``app`` (WSGI, on the worker's threads) and, before it, ``inline``
    (on the loop: a Reply, or None to pass the request on)."""
    app: Callable
    inline: Callable[["Request"], Reply | None] | None = None
    limits: Limits = field(default_factory=Limits)
    threads: int = 2
    ssl_context: ssl.SSLContext | None = None
    handshake_timeout: float = 10.0
    # Addresses of load balancers in front. With TLS, a connection from one starts with a PROXY
    # protocol v1 header naming the client (nginx stream `proxy_protocol on`), read before the
    # handshake; without TLS, their X-Forwarded-For (its last entry) names the client. Anyone else
    # is the client itself, and a header of either kind from them is not believed.
    balancers: frozenset[str] = frozenset()


class Request:
    __slots__ = ("method", "target", "path", "query", "headers", "body", "version", "keep_alive", "remote",
                 "peer_der", "server")

    def __init__(self, method, target, headers, body, version, keep_alive, remote, peer_der, server):
        self.method = method                 # str
        self.target = target                 # str: the request target as sent (path and query)
        path, _, self.query = target.partition("?")
        self.path = urllib.parse.unquote(path, "latin-1") if "%" in path else path
        self.headers = headers               # list of (lower-case name, value), both str
        self.body = body                     # bytes, or a file for a spooled body
        self.version = version
        self.keep_alive = keep_alive
        self.remote = remote
        self.peer_der = peer_der
        self.server = server

    def body_bytes(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        self.body.seek(0)
        return self.body.read()


class _Refused(Exception):
    """A request refused before it is read whole; raised in the parser's callbacks, or queued behind
    requests of the same connection still being answered (answers keep their order)."""

    def __init__(self, status: int, text: str):
        self.status, self.text = status, text


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Status"
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode()
    return line


class _Clock:
    """The Date header, formatted once a second."""
    second = 0
    value = b""

    @classmethod
    def date(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.value = now, b"Date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return cls.value


class Front:
    """One worker's connections and the sweep that holds them to their deadlines."""

    def __init__(self, site: Site, loop: asyncio.AbstractEventLoop):
        self.site = site
        self.loop = loop
        self.connections: set[Connection] = set()
        self.pool = concurrent.futures.ThreadPoolExecutor(site.threads, thread_name_prefix="request")
        self.accepting = True
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    def protocol(self, remote: str | None = None) -> "Connection":
        return Connection(self, remote)

    def _sweep(self) -> None:
        now = time.monotonic()
        limits = self.site.limits
        for connection in list(self.connections):
            connection.check(now, limits)
        self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)

    def idle(self) -> bool:
        return all(not c.busy for c in self.connections)

    def close_idle(self) -> None:
        for connection in list(self.connections):
            if not connection.busy and connection.started is None:
                connection.transport.close()

    def stop(self) -> None:
        self._sweeper.cancel()
        for connection in list(self.connections):
            connection.transport.abort()
        self.pool.shutdown(wait=False, cancel_futures=True)


class Connection(asyncio.Protocol):
    """One client connection: httptools parses, the request is buffered, then answered in order."""

    def __init__(self, front: Front, remote: str | None = None):
        self.front = front
        self.site = front.site
        self.limits = front.site.limits
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote = remote or ""         # given: the client a balancer's PROXY header named
        self.forwarded = False             # the peer is a balancer whose X-Forwarded-For names the client
        self.peer_der = None
        self.server = ("", "")
        self.since = time.monotonic()      # silent since (between requests)
        self.started: float | None = None  # first byte of the request being read
        self.received = 0                  # bytes of that request so far
        self.busy = False                  # a request of this connection is being answered
        self.pending: collections.deque = collections.deque()
        self.paused = False
        self.closing = False
        self.close_after = False           # answer what was read, then close (after an Upgrade request)
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.fields: list = []
        self.body_parts: list = []
        self.body_size = 0
        self.spool = None
        self.limit = 0

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport
        if not self.remote:
            peer = transport.get_extra_info("peername")
            self.remote = peer[0] if peer else ""
            self.forwarded = self.site.ssl_context is None and self.remote in self.site.balancers
        sock = transport.get_extra_info("sockname")
        self.server = (str(sock[0]), str(sock[1])) if sock else ("", "")
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.peer_der = ssl_object.getpeercert(binary_form=True)
        self.front.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.front.connections.discard(self)
        if self.spool is not None:
            self.spool.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.status, refused.text)
            else:
                log.error("request from %s failed in the front", self.remote, exc_info=refused)
                self._refuse(500, "internal error")
        except httptools.HttpParserUpgrade:      # the request is answered (over HTTP/1.1), what follows is not read
            self.close_after = True
            if not self.busy and not self.closing:
                self.closing = True
                self.transport.close()
        except httptools.HttpParserError:
            self._refuse(400, "malformed request")

    def eof_received(self):
        """The client sent all it will: answer what is being answered, then close."""
        if self.busy or self.pending:
            self.close_after = True
            return True
        return None

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.started = time.monotonic()
        self.received = 0
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))
        self._count(len(name) + len(value) + 4)
        if len(self.fields) > self.limits.max_fields:
            raise _Refused(431, "too many header fields")

    def _count(self, size: int) -> None:
        self.received += size
        if self.received > self.limits.max_header:
            raise _Refused(431, "request line and headers too large")

    def on_headers_complete(self) -> None:
        target = self.url.decode("latin-1")
        self.limit = self.limits.max_body(target.partition("?")[0])
        declared = None
        for name, value in self.fields:
            if len(name) == 14 and name.lower() == b"content-length":
                declared = value
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise _Refused(400, "bad Content-Length") from None
            if size > self.limit:
                raise _Refused(413, f"request body larger than {self.limit} bytes")

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        self.received += len(chunk)
        if self.body_size > self.limit:
            raise _Refused(413, f"request body larger than {self.limit} bytes")
        if self.spool is not None:
            self.spool.write(chunk)
        elif self.body_size > SPOOL_BYTES:
            self.spool = tempfile.TemporaryFile()
            self.spool.writelines(self.body_parts)
            self.spool.write(chunk)
            self.body_parts = []
        else:
            self.body_parts.append(chunk)

    def on_message_complete(self) -> None:
        parser = self.parser
        headers = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in self.fields]
        if self.spool is not None:
            body, self.spool = self.spool, None
        else:
            parts = self.body_parts
            body = parts[0] if len(parts) == 1 else b"".join(parts)
        remote = self.remote
        if self.forwarded:
            remote = _forwarded_for(headers) or remote
        request = Request(parser.get_method().decode("ascii", "replace"), self.url.decode("latin-1"), headers, body,
                          parser.get_http_version(), parser.should_keep_alive(), remote, self.peer_der,
                          self.server)
        self.started = None
        self._reset()
        if self.busy or self.pending:
            self.pending.append(request)
            if not self.paused:
                self.paused = True
                self.transport.pause_reading()         # no unbounded pipeline
        else:
            self._answer(request)

    # answering

    def _answer(self, request: Request) -> None:
        inline = self.site.inline
        if inline is not None:
            try:
                reply = inline(request)
            except Exception:   # noqa: BLE001 - one answer, never a stack trace to the client
                log.exception("%s %s failed", request.method, request.path)
                reply = (500, (("Content-Type", "text/plain"),), b"internal error\n")
            if reply is not None:
                self._send(request, reply)
                return
        self.busy = True
        future = self.front.loop.run_in_executor(self.front.pool, _call_wsgi, self.site.app, request,
                                                 self.site.ssl_context is not None)
        future.add_done_callback(lambda done: self._answered(request, done))

    def _answered(self, request: Request, done) -> None:
        self.busy = False
        if not isinstance(request.body, bytes):
            request.body.close()
        try:
            reply = done.result()
        except Exception:   # noqa: BLE001
            log.exception("%s %s failed", request.method, request.path)
            reply = (500, (("Content-Type", "text/plain"),), b"internal error\n")
        if self.closing:
            return
        self._send(request, reply)
        while self.pending and not self.busy and not self.closing:     # pipelined behind it, in order
            item = self.pending.popleft()
            if isinstance(item, _Refused):
                self._refuse(item.status, item.text)
            else:
                self._answer(item)
        if self.paused and not self.pending and not self.closing:
            self.paused = False
            self.transport.resume_reading()

    def _send(self, request: Request, reply: Reply) -> None:
        status, headers, data = reply
        keep = request.keep_alive and self.front.accepting and not self.close_after
        out = [_status_line(status), _Clock.date()]
        length_given = False
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                length_given = True
            elif lower == "connection":
                if value.lower() == "close":
                    keep = False
                continue
            elif lower == "transfer-encoding":
                continue
            out.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not length_given:
            out.append(b"Content-Length: %d\r\n" % len(data))
        if not keep:
            out.append(b"Connection: close\r\n")
        out.append(b"\r\n")
        if request.method != "HEAD":
            out.append(data)
        self.transport.write(b"".join(out))
        if keep:
            self.since = time.monotonic()
        else:
            self.closing = True
            self.transport.close()

    def _refuse(self, status: int, text: str) -> None:
        """Answer a request that is not read further (408, 413, 431, 400) and close the connection;
        after the answers to the requests before it, if any are still being made."""
        if self.closing:
            return
        if self.busy or self.pending:
            self.pending.append(_Refused(status, text))
            self.started = None
            if not self.paused:
                self.paused = True
                self.transport.pause_reading()
            return
        self.closing = True
        self.started = None
        data = (text + "\n").encode()
        self.transport.write(_status_line(status) + _Clock.date() + b"Content-Type: text/plain\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(data) + data)
        self.transport.close()

    def check(self, now: float, limits: Limits) -> None:
        """The sweep: a request past its deadline is 408, a connection silent for too long is closed."""
        if self.closing or self.busy:
            return
        if self.started is not None:
            if now - self.started > limits.deadline + self.received / MIN_RATE:
                log.info("request from %s not received within the deadline: 408", self.remote)
                self._refuse(408, "request not received in time")
        elif not self.pending and now - self.since > limits.idle:
            self.closing = True
            self.transport.close()


def _call_wsgi(app, request: Request, https: bool) -> Reply:
    environ = _environ(request, https)
    started: list = []

    def start_response(status, headers, exc_info=None):
        started[:] = [status, headers]

    result = app(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    return int(status.split(" ", 1)[0]), headers, data


def _forwarded_for(headers: list[tuple[str, str]]) -> str | None:
    """The client a balancer names: the last entry of the last X-Forwarded-For (entries before it
    are what the client itself claimed)."""
    for name, value in reversed(headers):
        if name == "x-forwarded-for":
            return value.rsplit(",", 1)[-1].strip() or None
    return None


PROXY_V1_MAX = 107            # bytes of a PROXY protocol v1 header, CRLF included (the spec's limit)


def parse_proxy_v1(line: bytes) -> str | None:
    """The source address of a PROXY protocol v1 header line (without its CRLF); None for
    ``PROXY UNKNOWN`` (the balancer's own connection, e.g. a health check). ValueError if it is not
    a well-formed header."""
    parts = line.split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise ValueError("not a PROXY protocol header")
    if parts[1] == b"UNKNOWN":
        return None
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ValueError("malformed PROXY protocol header")
    import ipaddress

    source = ipaddress.ip_address(parts[2].decode("ascii"))
    ipaddress.ip_address(parts[3].decode("ascii"))
    if (source.version == 4) != (parts[1] == b"TCP4"):
        raise ValueError("PROXY protocol address family mismatch")
    for port in parts[4:6]:
        if not port.isdigit() or not 0 <= int(port) <= 65535 or (len(port) > 1 and port.startswith(b"0")):
            raise ValueError("malformed PROXY protocol port")
    return str(source)


class _ProxyAcceptor:
    """Accepts on a listening socket itself (instead of ``create_server``) when balancers are
    configured: a connection from a balancer first gives its PROXY v1 header, read with MSG_PEEK so
    that not one byte of the TLS handshake behind it is taken, within ``handshake_timeout``; then
    TLS and the front's protocol take the socket, with the client the header named. A balancer's
    connection that starts with a TLS handshake instead is the balancer's own (a health check from
    its host) and keeps its address; anything else from it is closed. Connections from anyone else
    go straight to TLS: a header from them is not believed (it fails the handshake)."""

    def __init__(self, front: Front, sock, loop: asyncio.AbstractEventLoop):
        self.front, self.sock, self.loop = front, sock, loop
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:        # EMFILE and the like: logged, the listener stays
                log.warning("accept failed: %s", exc)
                return
            conn.setblocking(False)
            if address[0] in self.front.site.balancers:
                _ProxyHeader(self, conn)
            else:
                self._start(conn, None)

    def _start(self, conn, remote: str | None) -> None:
        site = self.front.site

        async def start() -> None:
            try:
                await self.loop.connect_accepted_socket(
                    lambda: self.front.protocol(remote), sock=conn, ssl=site.ssl_context,
                    ssl_handshake_timeout=site.handshake_timeout if site.ssl_context else None)
            except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
                log.info("connection from %s dropped in the handshake: %s", remote or "?", exc)
                conn.close()

        self.loop.create_task(start())


class _ProxyHeader:
    """Waits for one balancer connection's PROXY v1 header (peeked, then taken exactly)."""

    def __init__(self, acceptor: _ProxyAcceptor, conn):
        self.acceptor, self.conn, self.loop = acceptor, conn, acceptor.loop
        self.fd = conn.fileno()
        self.timer = self.loop.call_later(acceptor.front.site.handshake_timeout, self._give_up, "no header in time")
        self.retry = None
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            seen = self.conn.recv(PROXY_V1_MAX, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            return self._give_up(str(exc))
        if seen[:1] == b"\x16":                     # a TLS handshake, no header: the balancer's own
            self._done()                               # connection (its health check), the balancer's address
            return self.acceptor._start(self.conn, None)
        end = seen.find(b"\r\n")
        if end < 0:
            if not seen or len(seen) >= PROXY_V1_MAX or not seen.startswith(b"PROXY"[:len(seen)]):
                return self._give_up("not a PROXY protocol header" if seen else "closed before its header")
            self.loop.remove_reader(self.fd)         # a part of it: look again shortly (peeking never drains)
            self.retry = self.loop.call_later(0.01, self.loop.add_reader, self.fd, self._readable)
            return
        try:
            remote = parse_proxy_v1(seen[:end])
        except ValueError as exc:
            return self._give_up(str(exc))
        self.conn.recv(end + 2)                      # exactly the header; the handshake stays queued
        self._done()
        self.acceptor._start(self.conn, remote)

    def _done(self) -> None:
        self.timer.cancel()
        if self.retry is not None:
            self.retry.cancel()
        self.loop.remove_reader(self.fd)

    def _give_up(self, why: str) -> None:
        self._done()
        log.info("balancer connection closed: %s", why)
        self.conn.close()


def _environ(request: Request, https: bool) -> dict:
    body = request.body
    if isinstance(body, bytes):
        length, stream = len(body), io.BytesIO(body)
    else:
        length = body.seek(0, io.SEEK_END)
        body.seek(0)
        stream = body
    host, port = request.server
    environ = {
        "REQUEST_METHOD": request.method, "SCRIPT_NAME": "", "PATH_INFO": request.path,
        "QUERY_STRING": request.query, "RAW_URI": request.target, "REQUEST_URI": request.target,
        "SERVER_NAME": host, "SERVER_PORT": port, "SERVER_PROTOCOL": f"HTTP/{request.version}",
        "REMOTE_ADDR": request.remote, "CONTENT_LENGTH": str(length),
        "wsgi.version": (1, 0), "wsgi.url_scheme": "https" if https else "http", "wsgi.input": stream,
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.input_terminated": True, "device_ca.peer_der": request.peer_der,
    }
    for name, value in request.headers:
        if name == "content-type":
            environ["CONTENT_TYPE"] = value
        elif name in ("content-length", "transfer-encoding"):
            continue
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = environ[key] + "," + value if key in environ else value
    return environ


class LoopWorker(Worker):
    """gunicorn worker class: the application its factory returns is a ``Site``; it is served on
    gunicorn's listening sockets by an event loop (uvloop when installed)."""

    def init_signals(self) -> None:
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.siginterrupt(signal.SIGUSR1, False)

    def run(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:                   # connections cost a descriptor each, not a thread: allow many
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        try:
            import uvloop
            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(loop))
        finally:
            loop.close()

    async def _serve(self, loop) -> None:
        site: Site = self.wsgi
        front = Front(site, loop)
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            loop.add_signal_handler(sig, stopping.set)
        if site.balancers and site.ssl_context is not None:
            servers = [_ProxyAcceptor(front, listener.sock, loop) for listener in self.sockets]
        else:
            servers = [await loop.create_server(front.protocol, sock=listener.sock, ssl=site.ssl_context,
                                                ssl_handshake_timeout=site.handshake_timeout if site.ssl_context
                                                else None, backlog=self.cfg.backlog)
                       for listener in self.sockets]
        interval = max(0.5, min(2.0, self.timeout / 4)) if self.timeout else 1.0
        while not stopping.is_set() and self.alive:
            self.notify()
            if self.ppid != os.getppid():
                log.info("worker %d: parent changed, stopping", os.getpid())
                break
            try:
                await asyncio.wait_for(stopping.wait(), interval)
            except TimeoutError:
                pass
        front.accepting = False
        for server in servers:
            server.close()
        front.close_idle()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while not front.idle() and time.monotonic() < deadline:
            self.notify()
            await asyncio.sleep(0.1)
        front.stop()
