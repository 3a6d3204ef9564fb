"""`device-ca serve`: gunicorn with HTTPS (EST) and plain HTTP (CA files, health, metrics).

Two gunicorn arbiters, one per listener, each in its own process. Workers build their own
Services after the fork, so PKCS#11 is opened in each worker and never in a parent
(SoftHSM refuses a C_Initialize inherited through fork). The HTTPS listener asks for a client
certificate but does not require one (CERT_OPTIONAL), and verifies it against the CA chain
and every manufacturer CA that a policy trusts.
"""
from __future__ import annotations

import ctypes
import datetime as dt
import fcntl
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from device_ca.config import Settings
from device_ca.errors import DeviceCAError, Kind
from device_ca.runtime import quiet_gc
from device_ca.web.ratelimit import RateLimiter

log = logging.getLogger("device_ca.serve")

SERVER_CERT_RENEW_BEFORE = dt.timedelta(days=30)
JANITOR_SECONDS = 5          # CRL after a revocation within seconds (bursts coalesce into one CRL)
ROTATION_EVERY = 6           # superseded revocations and responder rotation every 30 s
HTTP_STOP_GRACE = 10.0       # seconds the HTTP listener gets to stop before it is killed


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8443
    http_port: int = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None
    workers: int = 4
    threads: int = 2
    http_workers: int = 2
    rate_limit: float = 20.0
    trusted_proxies: tuple[str, ...] = field(default=())
    client_cert_header: str | None = None
    default_policy: str | None = None
    timeout: int = 30
    handshake_timeout: float = 10.0   # seconds a client has for its whole TLS handshake
    idle_timeout: float = 15.0        # seconds of silence after which a connection is closed


def _ssl_context(options: ServeOptions):
    """gunicorn's ``ssl_context`` hook: the context is built once per worker (gunicorn calls the
    hook for every connection, and building a context, CA bundle, key and chain parsed again,
    cost more than the handshake) and hands out ``TimedSocket``s (handshake deadline, idle limit).
    No TLS 1.3 session tickets: devices enroll on fresh connections and never resume, and issuing
    tickets costs about a third of each mutual-TLS handshake."""
    from device_ca.web.tls_timeouts import TimedSocket

    contexts: dict[int, ssl.SSLContext] = {}

    def context_for(config, default_ssl_context_factory):
        context = contexts.get(os.getpid())
        if context is None:
            context = default_ssl_context_factory()
            context.num_tickets = 0
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            TimedSocket.configure(context, options.handshake_timeout, options.idle_timeout)
            contexts[os.getpid()] = context
        return context
    return context_for


def _gunicorn(factory, options: dict):
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            return factory()

    return _App()


def _https_factory(options: ServeOptions, linter, limiter):
    def build():
        from device_ca.services import Services
        from device_ca.web.app import create_app
        from device_ca.web.tls import ProxySettings

        services = Services(Settings.load(), linter=linter)
        _open_token(services)
        _start_janitor(services)
        app = create_app(services, proxies=ProxySettings(frozenset(options.trusted_proxies),
                                                         options.client_cert_header),
                         default_policy=options.default_policy, limiter=limiter)
        quiet_gc()
        return app
    return build


def _open_token(services) -> None:
    """Log in to the token and find the signing key while the worker starts, not on its first
    request (which would wait for it). A token that is not there yet is not fatal: requests
    answer 503 until it is."""
    try:
        services.issuer
    except DeviceCAError as exc:
        log.warning("worker %d: signing key not available yet: %s", os.getpid(), exc)


def http_app():
    """granian's factory for the plain-HTTP listener, called in each worker after the fork."""
    from device_ca.services import Services
    from device_ca.web.app import create_public_app
    from device_ca.web.status import StatusApp

    services = Services(Settings.load())
    return StatusApp(services, create_public_app(services))


def _granian(options: ServeOptions):
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    return Granian("device_ca.web.server:http_app", factory=True, interface=Interfaces.WSGI,
                   address=options.host, port=options.http_port, workers=options.http_workers,
                   blocking_threads=1, http="1", websockets=False, backlog=1024,
                   http1_settings=HTTP1Settings(header_read_timeout=10_000, keep_alive=True),
                   log_level="warning", respawn_failed_workers=True)


def _start_janitor(services) -> None:
    """In one HTTPS worker at a time (a flock on ``run/janitor.lock``; when that worker dies another
    takes over): publish a CRL when a revocation asks for one or half its validity has passed;
    pre-sign OCSP answers for new, revoked and ageing certificates; revoke superseded certificates
    whose rotation grace is over; rotate the OCSP responder."""
    stop = threading.Event()
    lock_path = services.settings.home / "run" / "janitor.lock"

    def loop() -> None:
        rounds, lock = 0, None
        while not stop.wait(JANITOR_SECONDS):
            rounds += 1
            try:
                if lock is None:
                    lock = _try_lock(lock_path)
                    if lock is None:
                        continue
                if services.revocation.crl_due():
                    services.revocation.generate_crl()
                signed = services.revocation.presign()
                if signed:
                    log.info("pre-signed %d OCSP answers", signed)
                if rounds % ROTATION_EVERY == 0:
                    done = services.est.revoke_superseded()
                    if done:
                        log.info("revoked %d superseded certificates", len(done))
                    services.revocation.ensure_responder()
            except Exception as exc:  # noqa: BLE001 - keep the janitor alive; the next round retries
                log.warning("janitor: %s", exc)

    threading.Thread(target=loop, name="device-ca-janitor", daemon=True).start()
    from device_ca.keycloak.outbox import start_drainer
    start_drainer(services)                     # Keycloak outbox, every second, when keycloak_url is set


def _try_lock(path: Path) -> int | None:
    """A file descriptor holding an exclusive flock on ``path``, or None if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def ensure_server_certificate(settings: Settings, host: str) -> tuple[Path, Path]:
    """The HTTPS certificate, issued by the CA in a child process (the parent never opens PKCS#11)."""
    directory = settings.home / "tls"
    cert, key = directory / "server.pem", directory / "server.key"
    if cert.exists() and key.exists() and _still_good(cert, settings):
        return cert, key
    proc = subprocess.run([sys.executable, "-m", "device_ca.cli.main", "tls", "server-cert", "--host", host,
                           "--out-dir", str(directory)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DeviceCAError(Kind.INTERNAL, f"could not issue the server certificate: "
                            f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return cert, key


def _prepare_status(settings: Settings) -> None:
    """An OCSP responder certificate and a CRL before the first relying party asks (child process)."""
    for args in (["ocsp", "refresh"], ["crl", "generate"]):
        proc = subprocess.run([sys.executable, "-m", "device_ca.cli.main", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DeviceCAError(Kind.INTERNAL, f"'device-ca {' '.join(args)}' failed: "
                                f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")


def _still_good(cert_path: Path, settings: Settings) -> bool:
    from device_ca.store import Store

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    store = Store(settings.database_url)
    try:
        issuing = x509.load_der_x509_certificate(store.ca_certificates()["issuing"].der)
    finally:
        store.db.dispose()
    if cert.issuer != issuing.subject:
        return False
    return cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > SERVER_CERT_RENEW_BEFORE


def client_ca_bundle(settings: Settings) -> Path:
    """The CA chain plus every manufacturer CA a policy trusts: what TLS verifies client certificates with."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from device_ca.policy import Policies
    from device_ca.store import Store

    store = Store(settings.database_url)
    try:
        records = store.ca_certificates()
    finally:
        store.db.dispose()
    if "issuing" not in records:
        raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
    pem = b"".join(x509.load_der_x509_certificate(records[n].der).public_bytes(Encoding.PEM) for n in ("issuing", "root"))
    for policy in Policies.load(settings.policy_dir):
        for path in policy.manufacturer_cas:
            pem += Path(path).read_bytes().strip() + b"\n"
    bundle = settings.home / "tls" / "client-ca.pem"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    tmp = bundle.with_suffix(".tmp")
    tmp.write_bytes(pem)
    os.replace(tmp, bundle)
    return bundle


def run(options: ServeOptions) -> None:
    settings = Settings.load()
    bundle = client_ca_bundle(settings)
    if options.tls_cert and options.tls_key:
        cert, key = options.tls_cert, options.tls_key
    elif options.tls_cert or options.tls_key:
        raise DeviceCAError(Kind.MALFORMED, "--tls-cert and --tls-key go together")
    else:
        cert, key = ensure_server_certificate(settings, options.host)
    _prepare_status(settings)
    metrics_dir = settings.home / "run" / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    linter = _preload(settings)
    common = {"timeout": options.timeout, "graceful_timeout": 10, "errorlog": "-", "loglevel": "warning",
              "accesslog": None, "preload_app": False, "limit_request_line": 4094, "limit_request_fields": 50,
              "limit_request_field_size": 16384}
    http = _granian(options)
    limiter = RateLimiter(options.rate_limit)     # before the fork: one set of buckets for every worker
    https = _gunicorn(_https_factory(options, linter, limiter), {
        **common, "bind": f"{options.host}:{options.port}", "workers": options.workers,
        "worker_class": "gthread", "threads": options.threads, "keepalive": 5,
        "certfile": str(cert), "keyfile": str(key), "ca_certs": str(bundle), "cert_reqs": ssl.CERT_OPTIONAL,
        "ssl_context": _ssl_context(options),
        "proc_name": "device-ca-https"})

    child = os.fork()
    if child == 0:
        os.setpgrp()                          # the HTTP listener and its workers: one group to stop
        _die_with_parent()
        http.serve()
        os._exit(0)
    print(f"device-ca serving EST on https://{options.host}:{options.port}/.well-known/est "
          f"and OCSP/CRL/CA files on http://{options.host}:{options.http_port}", flush=True)
    try:
        https.run()
    finally:
        _stop_group(child)


def _preload(settings: Settings):
    """Import the application and lint every policy's certificate shape in the parent, before the
    fork: each HTTPS worker inherits the modules, pkilint's validators and the shapes known clean
    instead of spending a second of CPU on its first certificate. Returns the linter the workers
    use. The parent never opens PKCS#11; its database connections are closed before the fork."""
    import device_ca.web.app  # noqa: F401
    import hsm  # noqa: F401 - python-pkcs11 imported once here; its library is loaded after the fork
    from device_ca.ca import lint
    from device_ca.services import Services

    lint.preload()
    services = Services(settings)
    try:
        services.warm_linter()
    finally:
        services.store.db.dispose()
    quiet_gc()
    return services.linter


def _stop_group(leader: int, grace: float = HTTP_STOP_GRACE) -> None:
    """SIGTERM to the HTTP listener's process group, SIGKILL if it has not exited after ``grace``
    seconds (granian's main process was seen to hang in its shutdown, which left it running)."""
    try:
        os.killpg(leader, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(leader, os.WNOHANG)
        except ChildProcessError:
            pid = leader
        if pid == leader:
            break
        time.sleep(0.1)
    else:
        log.warning("the HTTP listener did not stop within %.0f s; killing it", grace)
    try:
        os.killpg(leader, signal.SIGKILL)      # also any worker its main process left behind
    except ProcessLookupError:
        pass
    try:
        os.waitpid(leader, 0)
    except ChildProcessError:
        pass


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG
    except OSError:
        pass
