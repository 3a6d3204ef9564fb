r"""Mosquitto (Debian ``mosquitto`` 2.0.11) as a CRL-checking MQTT/TLS peer for integration tests.

Install with ``scripts/install-tools.sh`` (Debian ``mosquitto`` + ``mosquitto-clients``; the
system broker it starts on 1883 is stopped and disabled there).

    with Mosquitto(ca_chain, server_cert, server_key, crl_path) as broker:
        r = publish(broker.port, ca_chain, client_cert, client_key)
        assert r.returncode == 0
        crl_path.write_bytes(new_crl)     # write then rename
        broker.reload()                   # SIGHUP re-reads the crlfile (see below)

Configuration written (one TLS listener on 127.0.0.1, nothing else)::

    user root             (only when running as root; see config())
    per_listener_settings false
    allow_anonymous false
    persistence false
    log_dest file DIR/mosquitto.log
    log_type error / warning / notice / information  (one value per line)
    connection_messages true
    listener PORT 127.0.0.1
    cafile CA_CHAIN
    certfile SERVER_CERT
    keyfile SERVER_KEY
    crlfile CRL
    require_certificate true
    use_identity_as_username true
    tls_version tlsv1.2   (only if asked; default lets OpenSSL pick, TLS 1.3 negotiated)

What mosquitto 2.0 needs so certificate-identified clients may connect and publish (checked
here): ``allow_anonymous false`` plus ``use_identity_as_username true`` is enough. The client
certificate's CN becomes the username (the log shows ``u'test-client'``) and counts as
authenticated, so no password_file is needed. With no ``acl_file`` every authenticated client
may publish and subscribe to any topic. ``per_listener_settings false`` makes allow_anonymous
global. Running as root needs ``user root``, otherwise the broker switches to user
"mosquitto" before it opens the log and the 0600 key files. It still prints "Warning:
Mosquitto should not be run as root/administrator." to stderr; that is harmless.

CRL facts, all checked with mosquitto 2.0.11 and OpenSSL 3.0 on Debian 12:

- ``crlfile`` must be PEM. A DER CRL stops the broker at start-up with "Unable to load
  certificate revocation file ... PEM routines::no start line". A missing file stops it too
  ("Unable to load certificate revocation file ... No such file or directory", exit 1).
- mosquitto sets X509_V_FLAG_CRL_CHECK, so the CRL applies to the leaf only, and that leaf's
  issuer MUST have a CRL that is currently valid. An expired CRL (nextUpdate in the past) or a
  crlfile holding only another CA's CRL refuses EVERY client, not just revoked ones. The log
  shows "certificate verify failed", the same message a revoked client gets.
- Reload: mosquitto 2.0.11 DOES re-read ``crlfile`` on SIGHUP. The log shows "Reloading
  config."; after that, new TLS connections are checked against the new CRL. Connections
  already open are NOT dropped: a subscriber that connected with the now-revoked certificate
  stays connected through the reload. If the crlfile is missing or unreadable at reload time,
  the log shows "Error: Unable to load certificate revocation file ...". The broker stays up
  and keeps using the previous CRL (it still accepted the client). Publish the CRL atomically
  (write, then rename) before the SIGHUP. `restart()` (stop, then start on the same port)
  also works; tests use it for a clean state.

What the broker and mosquitto_pub do with a revoked client certificate: the broker fails the
TLS handshake and logs::

    New connection from 127.0.0.1:PORT on port P.
    OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed
    Client <unknown> disconnected: Protocol error.

``mosquitto_pub`` prints nothing on stdout and one of these lines on stderr. Which one you get
depends on timing (it connects non-blocking), and both happen with TLS 1.3 and with
``tls_version tlsv1.2``::

    Error: The connection was lost.      exit status 7 (MOSQ_ERR_CONN_LOST), most runs
    Error: Protocol error                exit status 1 (MOSQ_ERR_PROTOCOL), about 1 run in 3

No OpenSSL reason is printed unless ``-d`` is given. A successful publish prints nothing and
exits 0. `publish()` uses ``-q 1``, so exit 0 also means the broker acknowledged the message
with PUBACK. `refused()` recognises both failure forms.

Each health probe of the port (`wait_for_port`: a TCP connect closed without TLS) leaves one
harmless log line: "Client connection from 127.0.0.1 failed: ... unexpected eof while reading".
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from integration.tls_tools import LOOPBACK, free_port, stop_process, wait_for_port


class MosquittoError(RuntimeError):
    pass


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
    if not path:
        raise MosquittoError("mosquitto not found: run scripts/install-tools.sh (Debian package mosquitto)")
    return path


def mosquitto_pub_binary() -> str:
    path = shutil.which("mosquitto_pub")
    if not path:
        raise FileNotFoundError("mosquitto_pub not found: run scripts/install-tools.sh (Debian mosquitto-clients)")
    return path


class Mosquitto:
    """A mosquitto broker with one mutual-TLS listener on 127.0.0.1 and a CRL, in the foreground.

    `cafile` is the CA chain PEM that client certificates must chain to; `certfile`/`keyfile` the
    server certificate (SAN IP:127.0.0.1, as make_pki issues) and key; `crlfile` a PEM CRL
    (mosquitto reads PEM only) that must exist before entering.
    Entering waits for the port and raises MosquittoError with the log tail if the broker exits
    or does not come up; leaving sends SIGTERM (SIGKILL after `stop_timeout`) and raises if the
    broker had died while in use.
    """

    def __init__(self, cafile: str | os.PathLike, certfile: str | os.PathLike, keyfile: str | os.PathLike,
                 crlfile: str | os.PathLike, *, port: int | None = None, tls_version: str | None = None,
                 start_timeout: float = 10.0, stop_timeout: float = 5.0, keep_dir: bool = False):
        self.cafile, self.certfile, self.keyfile, self.crlfile = map(Path, (cafile, certfile, keyfile, crlfile))
        self.port = port or free_port()
        self.tls_version = tls_version
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.keep_dir = keep_dir
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def conf_path(self) -> Path:
        return self.dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "mosquitto.log"

    def config(self) -> str:
        lines = [
            # As root, mosquitto switches to user "mosquitto" BEFORE opening the log and the
            # key files ("Unable to load server key file ... Permission denied" on 0600 keys in
            # a 0700 temp dir); `user root` keeps it root, as the nginx harness does.
            *(["user root"] if os.geteuid() == 0 else []),
            "per_listener_settings false",
            "allow_anonymous false",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
            "log_timestamp true",
            "connection_messages true",
            f"listener {self.port} {LOOPBACK}",
            f"cafile {self.cafile.resolve()}",
            f"certfile {self.certfile.resolve()}",
            f"keyfile {self.keyfile.resolve()}",
            f"crlfile {self.crlfile.resolve()}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
        if self.tls_version:
            lines.append(f"tls_version {self.tls_version}")
        return "\n".join(lines) + "\n"

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in (self.log_path, self.dir / "stderr.log"):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(out)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "Mosquitto":
        self.dir = Path(tempfile.mkdtemp(prefix="device-ca-mosquitto-"))
        self.conf_path.write_text(self.config())
        try:
            self._start()
        except BaseException:
            self._cleanup()
            raise
        return self

    def _start(self) -> None:
        stderr = open(self.dir / "stderr.log", "ab")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf_path)],
                                     stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                     start_new_session=True)
        stderr.close()
        alive = lambda: self.proc.poll() is None  # noqa: E731
        if not wait_for_port(self.port, timeout=self.start_timeout, alive=alive):
            status = f"exited with {self.proc.returncode}" if not alive() else "timed out"
            tail = self.log_tail()
            self._stop()
            raise MosquittoError(f"mosquitto did not start ({status}; waiting for {LOOPBACK}:{self.port}):\n{tail}")

    def reload(self, settle: float = 0.3) -> None:
        """SIGHUP: mosquitto 2.0 re-reads the configuration, certificates and the crlfile.

        Returns once "Reloading config." is logged (plus `settle` seconds). Raises if the broker
        died. A crlfile that cannot be loaded is logged and the old CRL stays in force.
        """
        self._check_alive("reload")
        before = self.log().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while self.log().count("Reloading config") <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(settle)      # the reload runs in the main loop after the log line
        self._check_alive("reload")

    def restart(self) -> None:
        """Stop and start again on the same port with the same configuration."""
        self._stop()
        self._start()

    def _check_alive(self, what: str) -> None:
        if self.proc.poll() is not None:
            raise MosquittoError(f"mosquitto exited (status {self.proc.returncode}) before {what}:\n{self.log_tail()}")

    def __exit__(self, exc_type, exc, tb) -> None:
        died = self.proc is not None and self.proc.poll() is not None
        tail = self.log_tail() if died else ""
        self._stop()
        self._cleanup()
        if died and exc_type is None:
            raise MosquittoError(f"mosquitto exited while in use (status {self.proc.returncode}):\n{tail}")

    def _stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, self.stop_timeout)

    def _cleanup(self) -> None:
        if self.dir and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def publish(port: int, cafile: str | os.PathLike, cert: str | os.PathLike, key: str | os.PathLike,
            topic: str = "t", message: str = "m", timeout: float = 10) -> subprocess.CompletedProcess:
    """`mosquitto_pub` over TLS to 127.0.0.1:PORT with a client certificate; output captured as text.

    Exit 0 and no output on success (QoS 1: the broker sent PUBACK). A refused (e.g. revoked)
    certificate gives exit 7 "Error: The connection was lost." or, depending on timing, exit 1
    "Error: Protocol error" on stderr.
    """
    cmd = [mosquitto_pub_binary(), "-h", LOOPBACK, "-p", str(port), "--cafile", str(cafile),
           "--cert", str(cert), "--key", str(key), "-t", topic, "-m", message, "-q", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def refused(result: subprocess.CompletedProcess) -> bool:
    """True when mosquitto_pub failed at the TLS/connection level (what a revoked certificate gives)."""
    return result.returncode in (1, 7) and any(
        s in result.stderr for s in ("Error: The connection was lost", "Error: Protocol error",
                                     "Error: A TLS error occurred"))
