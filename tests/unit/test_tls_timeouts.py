"""TimedSocket on real loopback TLS connections: the handshake deadline and the idle limit."""
from __future__ import annotations

import datetime as dt
import errno
import socket
import ssl
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_ca.web.tls_timeouts import TimedSocket


@pytest.fixture(scope="module")
def server_context(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1)).sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    TimedSocket.configure(context, handshake_timeout=1.0, idle_timeout=0.5)
    return context


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
def pair(server_context):
    """(server side as gunicorn makes it, client socket) after a completed handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    client_holder = {}

    def connect():
        raw = socket.create_connection(listener.getsockname())
        client_holder["client"] = _client_context().wrap_socket(raw)

    thread = threading.Thread(target=connect)
    thread.start()
    raw, _ = listener.accept()
    raw.setblocking(True)
    server = server_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    server.do_handshake()
    thread.join()
    yield server, client_holder["client"]
    server.close()
    client_holder["client"].close()
    listener.close()


def test_context_hands_out_timed_sockets(pair):
    server, _ = pair
    assert isinstance(server, TimedSocket)
    assert server.gettimeout() == 0.5                     # blocking, with the idle limit
    server.setblocking(False)
    assert server.gettimeout() == 0.0
    server.setblocking(True)
    assert server.gettimeout() == 0.5


def test_request_and_answer_pass_through(pair):
    server, client = pair
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert server.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
    server.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    assert client.recv(100) == b"HTTP/1.1 200 OK\r\n\r\n"


def test_silent_client_reads_as_gone_and_is_closed(pair):
    server, _ = pair
    start = time.monotonic()
    assert server.recv(100) == b""
    assert 0.4 <= time.monotonic() - start < 3
    assert server.fileno() == -1


def test_client_that_stops_reading_is_a_broken_pipe(pair):
    server, _ = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with pytest.raises(BrokenPipeError):
        server.sendall(b"x" * (16 * 1024 * 1024))          # far more than the socket buffers hold
    assert server.fileno() == -1


def test_handshake_has_a_deadline_even_when_bytes_trickle_in(server_context):
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    stop = threading.Event()

    def trickle():                                         # a ClientHello, one byte every 0.2 s
        for byte in b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64):
            if stop.wait(0.2):
                return
            try:
                client.send(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=trickle)
    thread.start()
    raw, _ = listener.accept()
    raw.setblocking(True)
    server = server_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    start = time.monotonic()
    try:
        with pytest.raises(OSError) as raised:
            server.do_handshake()
        elapsed = time.monotonic() - start
        assert raised.value.errno == errno.ENOTCONN
        assert 0.9 <= elapsed < 3, elapsed                 # the idle limit (0.5 s) alone never fires here
        assert server.fileno() == -1
    finally:
        stop.set()
        thread.join()
        client.close()
        listener.close()
