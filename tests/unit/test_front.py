"""The event-loop front (web/front.py) on real loopback sockets, plain and TLS: deadlines for whole
requests, limits that refuse before the application sees anything, order of pipelined requests,
large bodies spooled, the client certificate passed on."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import threading
import time
import weakref

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_ca.web import front
from device_ca.web.front import Front, Limits, Site


class Recorder:
    """A WSGI application that records what reached it and echoes the body's size."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[dict] = []
        self.delay = delay

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read()
        self.calls.append({"path": environ["PATH_INFO"], "query": environ["QUERY_STRING"], "body": body,
                           "peer": environ.get("device_ca.peer_der"), "scheme": environ["wsgi.url_scheme"],
                           "x": environ.get("HTTP_X_TEST"), "remote": environ["REMOTE_ADDR"]})
        if self.delay:
            time.sleep(self.delay)
        data = f"{environ['PATH_INFO']} {len(body)}".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [data]


@contextlib.contextmanager
def serving(site: Site):
    """The front on a free loopback port, as LoopWorker runs it: its own accept loop when the site
    has balancers and TLS (PROXY protocol), else create_server."""
    loop = asyncio.new_event_loop()
    ready, holder = threading.Event(), {}

    def run():
        asyncio.set_event_loop(loop)
        the_front = Front(site, loop)
        if site.balancers and site.ssl_context is not None:
            listener = socket.create_server(("127.0.0.1", 0))
            server = front._ProxyAcceptor(the_front, listener, loop)
            holder["port"] = listener.getsockname()[1]
        else:
            server = loop.run_until_complete(loop.create_server(
                the_front.protocol, "127.0.0.1", 0, ssl=site.ssl_context,
                ssl_handshake_timeout=site.handshake_timeout if site.ssl_context else None))
            holder["port"] = server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        server.close()
        the_front.stop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield holder["port"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def _connect(port: int, source: str | None = None) -> socket.socket:
    """A connection from 127.0.0.1 (the balancer in the PROXY tests) or from ``source``."""
    return socket.create_connection(("127.0.0.1", port), timeout=5,
                                    source_address=(source, 0) if source else None)


_BUFFERS: "weakref.WeakKeyDictionary[socket.socket, bytearray]" = weakref.WeakKeyDictionary()


def _read_reply(sock: socket.socket, head: bool = False) -> tuple[int, dict, bytes]:
    """One response off ``sock``; bytes of the responses after it stay buffered for the next call."""
    buffer = _BUFFERS.setdefault(sock, bytearray())
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    head_bytes, sep, _ = bytes(buffer).partition(b"\r\n\r\n")
    del buffer[:len(head_bytes) + len(sep)]
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0] else 0
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = 0 if head else int(headers.get("content-length", 0))
    while len(buffer) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return status, headers, body


def _get(port: int, path: str = "/x") -> tuple[int, bytes]:
    with _connect(port) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        status, _, body = _read_reply(s)
    return status, body


def test_a_request_is_answered_and_keep_alive_serves_the_next():
    app = Recorder()
    with serving(Site(app)) as port, _connect(port) as s:
        s.sendall(b"POST /a?q=1 HTTP/1.1\r\nHost: t\r\nX-Test: one\r\nContent-Length: 3\r\n\r\nabc")
        status, headers, body = _read_reply(s)
        assert (status, body) == (200, b"/a 3") and headers["content-length"] == "4" and "date" in headers
        s.sendall(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_reply(s)[::2] == (200, b"/b 0")
    assert [(c["path"], c["query"], c["body"], c["x"], c["scheme"]) for c in app.calls] == \
        [("/a", "q=1", b"abc", "one", "http"), ("/b", "", b"", None, "http")]


def test_pipelined_requests_are_answered_in_order():
    app = Recorder(delay=0.05)
    with serving(Site(app, threads=4)) as port, _connect(port) as s:
        s.sendall(b"".join(f"GET /{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(5)))
        replies = [_read_reply(s)[2] for _ in range(5)]
    assert replies == [f"/{i} 0".encode() for i in range(5)]


def test_inline_answers_on_the_loop_and_passes_the_rest_on():
    app = Recorder()

    def inline(request):
        if request.path == "/fast":
            return 200, (("Content-Type", "text/plain"),), b"inline " + request.body_bytes()
        return None
    with serving(Site(app, inline=inline)) as port, _connect(port) as s:
        s.sendall(b"POST /fast HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        assert _read_reply(s)[2] == b"inline hi"
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_reply(s)[2] == b"/slow 0"
    assert [c["path"] for c in app.calls] == ["/slow"]


def test_pipelined_requests_answered_on_the_loop_and_on_threads_keep_their_order():
    app = Recorder(delay=0.05)

    def inline(request):
        return (200, (), b"inline " + request.path.encode()) if request.path.startswith("/fast") else None
    paths = ["/slow1", "/fast1", "/fast2", "/slow2", "/fast3"]
    with serving(Site(app, inline=inline)) as port, _connect(port) as s:
        s.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for p in paths))
        replies = [_read_reply(s)[2] for _ in paths]
    assert replies == [b"/slow1 0", b"inline /fast1", b"inline /fast2", b"/slow2 0", b"inline /fast3"]


def test_trickled_headers_and_bodies_get_408_at_the_deadline_while_others_are_served():
    """Attack: clients that send a byte now and then, in the headers or in the body. Each gets
    408 within the deadline, however it trickles; a normal request meanwhile is answered at once;
    the application never saw the slow requests."""
    app = Recorder()
    site = Site(app, limits=Limits(deadline=1.0, idle=5.0))
    with serving(site) as port:
        slow_header, slow_body = _connect(port), _connect(port)
        slow_header.sendall(b"GET /slow HTTP/1.1\r\nHo")
        slow_body.sendall(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0")
        started = time.monotonic()
        for _ in range(3):
            time.sleep(0.3)
            for s in (slow_header, slow_body):
                with contextlib.suppress(OSError):
                    s.sendall(b"0")
            t0 = time.perf_counter()
            assert _get(port) == (200, b"/x 0")
            assert time.perf_counter() - t0 < 0.2
        for s in (slow_header, slow_body):
            s.settimeout(3)
            status, headers, _ = _read_reply(s)
            assert status == 408 and headers["connection"] == "close"
            assert s.recv(10) == b""                                    # and closed
            assert time.monotonic() - started < 1.0 + 0.5 + 0.5
            s.close()
    assert [c["path"] for c in app.calls] == ["/x"] * 3


def test_a_request_at_a_real_rate_gets_more_time():
    """A body that keeps arriving at MIN_RATE or more is not cut at the deadline."""
    app = Recorder()
    size = 3 * front.MIN_RATE
    with serving(Site(app, limits=Limits(deadline=0.5, max_body=lambda p: 1 << 20))) as port, _connect(port) as s:
        s.sendall(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(6):                               # 0.6 s for the whole, more than the bare deadline
            s.sendall(b"a" * (size // 6))
            time.sleep(0.1)
        assert _read_reply(s)[::2] == (200, b"/up %d" % size)


def test_limits_refuse_before_the_application_sees_anything():
    app = Recorder()
    site = Site(app, limits=Limits(max_header=1024, max_fields=5, max_body=lambda p: 100 if p == "/small" else 1000))
    with serving(site) as port:
        cases = [
            (b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n", 413),
            (b"POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"40\r\n" + b"a" * 64 + b"\r\n40\r\n" + b"a" * 64 + b"\r\n0\r\n\r\n", 413),
            (b"GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n", 431),
            (b"GET /x HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(6)) + b"\r\n", 431),
            (b"GET /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
            (b"NOT HTTP AT ALL\r\n\r\n", 400),
        ]
        for raw, expected in cases:
            with _connect(port) as s:
                s.sendall(raw)
                status, headers, _ = _read_reply(s)
                assert (status, headers.get("connection")) == (expected, "close"), raw[:60]
        with _connect(port) as s:                                  # within the limits, chunked is read whole
            s.sendall(b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"40\r\n" + b"a" * 64 + b"\r\n40\r\n" + b"a" * 64 + b"\r\n0\r\n\r\n")
            assert _read_reply(s)[::2] == (200, b"/big 128")
    assert [c["path"] for c in app.calls] == ["/big"]


def test_an_upgrade_is_ignored_the_request_answered_and_the_connection_closed():
    with serving(Site(Recorder())) as port, _connect(port) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nGET /y HTTP/1.1\r\n\r\n")
        status, headers, body = _read_reply(s)
        assert (status, headers.get("connection"), body) == (200, "close", b"/x 0")
        s.settimeout(3)
        assert s.recv(100) == b""


def test_a_refusal_behind_a_request_still_being_answered_comes_after_its_answer():
    app = Recorder(delay=0.1)
    with serving(Site(app, limits=Limits(max_body=lambda p: 10))) as port, _connect(port) as s:
        s.sendall(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\nPOST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n")
        assert _read_reply(s)[::2] == (200, b"/first 0")
        status, headers, _ = _read_reply(s)
        assert (status, headers["connection"]) == (413, "close")
    assert [c["path"] for c in app.calls] == ["/first"]


def test_large_bodies_wait_in_a_file_and_arrive_whole():
    app = Recorder()
    payload = bytes(range(256)) * ((front.SPOOL_BYTES * 2) // 256)
    with serving(Site(app, limits=Limits(max_body=lambda p: 4 * front.SPOOL_BYTES))) as port, _connect(port) as s:
        s.sendall(b"PUT /f HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
        assert _read_reply(s)[::2] == (200, b"/f %d" % len(payload))
    assert app.calls[0]["body"] == payload


def test_idle_keep_alive_connections_are_closed():
    with serving(Site(Recorder(), limits=Limits(idle=0.5))) as port, _connect(port) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        assert _read_reply(s)[0] == 200
        started = time.monotonic()
        s.settimeout(3)
        assert s.recv(10) == b""
        assert 0.4 < time.monotonic() - started < 1.5


def test_head_has_no_body_and_http_1_0_closes():
    with serving(Site(Recorder())) as port, _connect(port) as s:
        s.sendall(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\nGET /y HTTP/1.0\r\n\r\n")
        status, headers, body = _read_reply(s, head=True)
        assert (status, headers["content-length"], body) == (200, "4", b"")
        s.settimeout(3)
        rest = bytes(_BUFFERS.pop(s, b""))
        while chunk := s.recv(1000):
            rest += chunk
        assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b"/y 0") and b"Connection: close" in rest


def test_an_application_error_is_500_without_details():
    def broken(environ, start_response):
        raise RuntimeError("secret detail /var/lib/x")
    with serving(Site(broken)) as port:
        status, body = _get(port)
    assert status == 500 and b"secret" not in body


# TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.timezone.utc)

    def issue(name, key, issuer_name, issuer_key):
        return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.BasicConstraints(ca=name == "ca", path_length=None), critical=True)
                .sign(issuer_key, hashes.SHA256()))

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = issue("ca", ca_key, "ca", ca_key)
    files = {}
    for name, cert, key in (("ca", ca, ca_key), ("server", issue("127.0.0.1", server_key, "ca", ca_key), server_key),
                            ("client", issue("client", client_key, "ca", ca_key), client_key)):
        files[name] = (directory / f"{name}.pem", directory / f"{name}.key", cert)
        files[name][0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[name][1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return files


def _tls_site(pki, app, **kw) -> Site:
    from device_ca.web.tls_context import server_context

    return Site(app, ssl_context=server_context(pki["server"][0], pki["server"][1], pki["ca"][0]), **kw)


def _client(pki, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"][0]))
    context.check_hostname = False          # the test certificate names no address; the chain is still verified
    if with_cert:
        context.load_cert_chain(pki["client"][0], pki["client"][1])
    return context


def test_tls_passes_the_verified_client_certificate_on(pki):
    app = Recorder()
    with serving(_tls_site(pki, app)) as port:
        for with_cert in (True, False):
            with _client(pki, with_cert).wrap_socket(_connect(port), server_hostname="127.0.0.1") as s:
                s.sendall(b"GET /who HTTP/1.1\r\nHost: t\r\n\r\n")
                assert _read_reply(s)[0] == 200
    expected = pki["client"][2].public_bytes(serialization.Encoding.DER)
    assert [(c["peer"], c["scheme"]) for c in app.calls] == [(expected, "https"), (None, "https")]


def test_slow_tls_clients_are_cut_off_and_hold_no_thread(pki):
    """Attack: more connections than threads stop halfway through the handshake or trickle their
    headers after it; a normal client is served meanwhile, and each slow one is closed."""
    app = Recorder()
    site = _tls_site(pki, app, threads=1, limits=Limits(deadline=1.0), handshake_timeout=1.0)
    with serving(site) as port:
        half = [_connect(port) for _ in range(5)]
        for s in half:
            s.sendall(b"\x16\x03\x01\x00\xff\x01")            # the start of a ClientHello, then nothing
        trickling = [_client(pki, False).wrap_socket(_connect(port), server_hostname="127.0.0.1") for _ in range(5)]
        for s in trickling:
            s.sendall(b"GET /x HTTP/1.1\r\n")
        started = time.monotonic()
        with _client(pki, True).wrap_socket(_connect(port), server_hostname="127.0.0.1") as normal:
            normal.sendall(b"GET /normal HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _read_reply(normal)[::2] == (200, b"/normal 0")
        assert time.monotonic() - started < 0.5
        for s in half:
            s.settimeout(3)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""
        for s in trickling:
            s.settimeout(3)
            assert _read_reply(s)[0] == 408
        assert time.monotonic() - started < 2.5
    assert [c["path"] for c in app.calls] == ["/normal"]


# Balancers: PROXY protocol before TLS, X-Forwarded-For without it (tests: 127.0.0.1 is the
# balancer, 127.0.0.2 a client connecting directly)

def test_a_balancers_proxy_header_names_the_client_and_tls_follows_untouched(pki):
    app = Recorder()
    with serving(_tls_site(pki, app, balancers=frozenset({"127.0.0.1"}))) as port:
        for header in (b"PROXY TCP4 198.51.100.7 127.0.0.1 40001 443\r\n",
                       b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 443\r\n", b"PROXY UNKNOWN\r\n"):
            raw = _connect(port)
            raw.sendall(header)              # the ClientHello follows in the next segment, or the same one
            with _client(pki, True).wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"GET /who HTTP/1.1\r\nHost: t\r\n\r\n")
                assert _read_reply(s)[0] == 200
        for source, path in (("127.0.0.2", b"/direct"), (None, b"/balancer-itself")):   # no header
            with _client(pki, False).wrap_socket(_connect(port, source), server_hostname="127.0.0.1") as s:
                s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
                assert _read_reply(s)[0] == 200
    expected = pki["client"][2].public_bytes(serialization.Encoding.DER)
    assert [(c["remote"], c["peer"]) for c in app.calls] == [
        ("198.51.100.7", expected), ("2001:db8::7", expected), ("127.0.0.1", expected), ("127.0.0.2", None),
        ("127.0.0.1", None)]


def test_a_proxy_header_from_anyone_but_a_balancer_and_a_bad_one_from_a_balancer_are_refused(pki):
    """Attack: a device sends a PROXY header to pass as another address (a rate limit per client);
    a balancer address that sends garbage, half a header or nothing within the handshake timeout."""
    app = Recorder()
    site = _tls_site(pki, app, balancers=frozenset({"127.0.0.1"}), handshake_timeout=1.0)
    with serving(site) as port:
        spoof = _connect(port, "127.0.0.2")
        spoof.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 1 443\r\n")
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            _client(pki, True).wrap_socket(spoof, server_hostname="127.0.0.1")
        for bad in (b"PROXY TCP4 999.1.1.1 127.0.0.1 1 443\r\n", b"PROXY TCP4 203.0.113.9 127.0.0.1 1\r\n",
                    b"PROXY TCP6 203.0.113.9 127.0.0.1 1 443\r\n", b"\x16\x03\x01\x00\xff\x01", b"PROXY TCP4 1.2",
                    b"", b"PROXY " + b"x" * 200):
            s = _connect(port)
            s.sendall(bad)
            s.settimeout(3)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b"", bad
            s.close()
    assert app.calls == []


def test_without_tls_a_balancers_x_forwarded_for_names_the_client_and_nobody_elses():
    app = Recorder()
    with serving(Site(app, balancers=frozenset({"127.0.0.1"}))) as port:
        for source in (None, "127.0.0.2"):
            with _connect(port, source) as s:
                s.sendall(b"GET /ocsp HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.9.9.9, 198.51.100.8\r\n\r\n")
                assert _read_reply(s)[0] == 200
    assert [c["remote"] for c in app.calls] == ["198.51.100.8", "127.0.0.2"]


@pytest.mark.parametrize("line, source", [
    (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2", "192.0.2.1"), (b"PROXY TCP6 ::1 ::1 65535 0", "::1"),
    (b"PROXY UNKNOWN", None), (b"PROXY UNKNOWN ff::1 ff::2 1 2", None)])
def test_proxy_v1_headers_parsed(line, source):
    assert front.parse_proxy_v1(line) == source


@pytest.mark.parametrize("line", [b"PROXY", b"proxy TCP4 1.1.1.1 1.1.1.1 1 1", b"PROXY TCP4 1.1.1.1 1.1.1.1 1 65536",
                                  b"PROXY TCP4 1.1.1.1 1.1.1.1 01 1", b"PROXY TCP4 ::1 ::1 1 1",
                                  b"PROXY UDP4 1.1.1.1 1.1.1.1 1 1", b"PROXY TCP4 1.1.1.1 1.1.1.1 -1 1"])
def test_malformed_proxy_v1_headers_refused(line):
    with pytest.raises(ValueError):
        front.parse_proxy_v1(line)
