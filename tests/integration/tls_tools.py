"""Third-party TLS tools for integration tests: a throw-away PKI, nginx on a loopback port, estclient.

Install the tools with ``scripts/install-tools.sh`` (nginx-light, wrk, estclient v1.0.6).

ESTCLIENT_DOC_PLACEHOLDER
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = LOOPBACK, timeout: float = 10.0, alive=lambda: True) -> bool:
    """True once host:port accepts a TCP connection; False on timeout or when alive() turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# --- throw-away PKI ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    """PEM files of a one-level test PKI (EC P-256): a CA, a server and a client certificate."""
    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path      # SAN IP:127.0.0.1 and DNS:localhost, EKU serverAuth
    server_key: Path
    client_cert: Path      # CN=test-client, EKU clientAuth
    client_key: Path
    server_chain: Path     # server certificate followed by the CA certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "device-ca tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key) -> None:
    """PKCS#8 PEM, unencrypted, a single PEM block (what estclient's -key reader requires)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def issue_leaf(ca_cert: x509.Certificate, ca_key, cn: str, *, server: bool, key=None,
               days: int = 2) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate for tests: serverAuth with SAN IP:127.0.0.1 + DNS:localhost, or clientAuth."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if server:
        builder = (builder
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.SubjectAlternativeName([
                       x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]),
                       critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                                        critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: str | os.PathLike, *, client_cn: str = "test-client") -> Pki:
    """Write a fresh CA, server certificate (for 127.0.0.1 / localhost) and client certificate."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    ca_cert = (x509.CertificateBuilder()
               .subject_name(_name("device-ca test TLS CA")).issuer_name(_name("device-ca test TLS CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    server_cert, server_key = issue_leaf(ca_cert, ca_key, "localhost", server=True)
    client_cert, client_key = issue_leaf(ca_cert, ca_key, client_cn, server=False)

    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    pki = Pki(d, d / "ca.pem", d / "ca.key", d / "server.pem", d / "server.key",
              d / "client.pem", d / "client.key", d / "server-chain.pem")
    pki.ca_cert.write_bytes(pem(ca_cert))
    pki.server_cert.write_bytes(pem(server_cert))
    pki.client_cert.write_bytes(pem(client_cert))
    pki.server_chain.write_bytes(pem(server_cert) + pem(ca_cert))
    _write_key(pki.ca_key, ca_key)
    _write_key(pki.server_key, server_key)
    _write_key(pki.client_key, client_key)
    return pki


# --- nginx ------------------------------------------------------------------------------------

class NginxError(RuntimeError):
    pass


def nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not path:
        raise NginxError("nginx not found: run scripts/install-tools.sh (Debian package nginx-light)")
    return path


_LISTEN = re.compile(r"(?<![\w$])listen\s+([^;\s]+)")


def _listen_ports(servers: str) -> list[int]:
    """Ports of the `listen` directives; every one must name a loopback address explicitly."""
    ports = []
    for address in _LISTEN.findall(servers):
        m = re.fullmatch(r"(127\.\d+\.\d+\.\d+|\[::1\]|localhost):(\d+)", address)
        if not m:
            raise ValueError(f"nginx must listen on loopback only (e.g. 127.0.0.1:PORT), got {address!r}")
        ports.append(int(m.group(2)))
    if not ports:
        raise ValueError("no `listen 127.0.0.1:PORT` directive in the server blocks")
    return ports


class Nginx:
    """An nginx master with its own prefix in a temp dir, running in the foreground (`daemon off`).

        with Nginx(f'''
            server {{
                listen 127.0.0.1:{port} ssl;
                ssl_certificate {pki.server_cert}; ssl_certificate_key {pki.server_key};
                location / {{ return 200 "ok\\n"; }}
            }}''') as nginx:
            ...

    `servers` is the body of the `http { }` block (server blocks, upstreams, log formats). Every
    `listen` must name a loopback address. pid, logs and all *_temp paths live in the temp dir;
    `user root;` is added when running as root so workers can read files in the 0700 temp dir.
    Entering waits until every listen port accepts connections and raises NginxError with the
    error log tail if nginx exits or does not come up. Leaving sends SIGQUIT (graceful), then
    SIGKILL after `stop_timeout`, and raises NginxError if nginx had died while in use.
    """

    def __init__(self, servers: str, *, worker_processes: int | str = 1, access_log: bool = True,
                 error_log_level: str = "warn", start_timeout: float = 10.0, stop_timeout: float = 5.0,
                 worker_connections: int = 1024, keep_dir: bool = False):
        self.servers = servers
        self.ports = _listen_ports(servers)
        self.worker_processes = worker_processes
        self.access_log = access_log
        self.error_log_level = error_log_level
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.worker_connections = worker_connections
        self.keep_dir = keep_dir
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def conf_path(self) -> Path:
        return self.dir / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.dir / "error.log"

    def config(self) -> str:
        d = self.dir
        user = "user root;\n" if os.geteuid() == 0 else ""
        access = f"access_log {d}/access.log;" if self.access_log else "access_log off;"
        return (
            f"{user}worker_processes {self.worker_processes};\n"
            f"daemon off;\nmaster_process on;\npid {d}/nginx.pid;\n"
            f"error_log {d}/error.log {self.error_log_level};\n"
            f"events {{ worker_connections {self.worker_connections}; }}\n"
            "http {\n"
            f"    {access}\n"
            f"    client_body_temp_path {d}/client_body_temp;\n"
            f"    proxy_temp_path {d}/proxy_temp;\n"
            f"    fastcgi_temp_path {d}/fastcgi_temp;\n"
            f"    uwsgi_temp_path {d}/uwsgi_temp;\n"
            f"    scgi_temp_path {d}/scgi_temp;\n"
            "    default_type application/octet-stream;\n"
            f"{self.servers}\n"
            "}\n")

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for path in (self.error_log, self.dir / "stderr.log"):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(out)

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes (children of the master)."""
        if not self.proc:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(entry))
        return pids

    def __enter__(self) -> "Nginx":
        self.dir = Path(tempfile.mkdtemp(prefix="device-ca-nginx-"))
        self.conf_path.write_text(self.config())
        binary = nginx_binary()
        test = subprocess.run([binary, "-t", "-q", "-c", str(self.conf_path), "-p", f"{self.dir}/",
                               "-e", str(self.error_log)], capture_output=True, text=True)
        if test.returncode != 0:
            message = f"nginx -t rejected the configuration:\n{test.stderr}\n{self._numbered()}"
            self._cleanup()
            raise NginxError(message)
        stderr = open(self.dir / "stderr.log", "wb")
        self.proc = subprocess.Popen([binary, "-c", str(self.conf_path), "-p", f"{self.dir}/",
                                      "-e", str(self.error_log)],
                                     stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                     start_new_session=True)
        stderr.close()
        alive = lambda: self.proc.poll() is None  # noqa: E731
        deadline = time.monotonic() + self.start_timeout
        # nginx writes its pid file only after binding every listen socket, so a port that
        # something else holds (free_port() races) is not mistaken for nginx being up.
        pid_file = self.dir / "nginx.pid"
        while alive() and time.monotonic() < deadline and not (
                pid_file.exists() and pid_file.read_text().strip() == str(self.proc.pid)):
            time.sleep(0.02)
        for port in self.ports:
            if not wait_for_port(port, timeout=max(0.1, deadline - time.monotonic()), alive=alive):
                status = "exited with %s" % self.proc.returncode if not alive() else "timed out"
                tail = self.log_tail()
                self._stop()
                self._cleanup()
                raise NginxError(f"nginx did not start ({status}; waiting for 127.0.0.1:{port}):\n{tail}")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        died = self.proc.poll() is not None
        tail = self.log_tail() if died else ""
        self._stop()
        self._cleanup()
        if died and exc_type is None:
            raise NginxError(f"nginx exited while in use (status {self.proc.returncode}):\n{tail}")

    def _stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(self.stop_timeout)

    def _cleanup(self) -> None:
        if self.dir and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _numbered(self) -> str:
        return "\n".join(f"{i:4} {line}" for i, line in enumerate(self.conf_path.read_text().splitlines(), 1))


# --- estclient --------------------------------------------------------------------------------

def estclient_binary() -> str:
    path = shutil.which("estclient") or next(
        (p for p in ("/usr/local/bin/estclient", os.path.expanduser("~/go/bin/estclient")) if os.access(p, os.X_OK)),
        None)
    if not path:
        raise FileNotFoundError("estclient not found: run scripts/install-tools.sh")
    return path


def estclient(*args: str | os.PathLike, timeout: float = 60, check: bool = False, input: bytes | None = None,
              cwd: str | os.PathLike | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `estclient ARGS...`; output captured as text. Never prompts (stdin is closed/`input`)."""
    cmd = [estclient_binary(), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, check=check, cwd=cwd, env=env,
                          input=input.decode() if input is not None else None, text=True,
                          stdin=None if input is not None else subprocess.DEVNULL)
