"""`device-ca serve`: the supervision of its two listeners, HTTPS (EST, batch API) and plain HTTP
(OCSP, CRL, CA files, health, metrics), each a gunicorn master with its own process group whose
workers run the event-loop front (front.py: whole requests under deadlines, then the application).

Workers build their own objects (services.py) after the fork, so PKCS#11 is opened in each worker
and never in a parent (SoftHSM refuses a C_Initialize inherited through fork); what the parent
needs signed before it starts the listeners (its TLS certificate, an OCSP responder, a first CRL)
is done by a function call in a short-lived forked child. The TLS context is tls_context.py's; the
periodic jobs run in one HTTPS worker of one node at a time (ra/janitor.py, a lease in the
database).
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path


from device_ca import files
from device_ca.config import Settings
from device_ca.errors import DeviceCAError, Kind
from device_ca.runtime import quiet_gc
from device_ca.web.ratelimit import RateLimiter

log = logging.getLogger("device_ca.serve")

HTTP_STOP_GRACE = 10.0    # seconds the HTTP listener gets to stop before it is killed
FOLLOW_SECONDS = 5.0       # how soon each worker notices a rollover made here or on another node
# One HTTPS worker per core, many threads each: the threads of a worker share their issuing
# transactions (group commit), and fewer processes contend less for the database's writer lock.
# Measured (benchmarks/est_bench.py, 2 cores, 16 clients): 2 x 8 spends 2.3-2.6 ms of server CPU
# per enrollment, 4 x 2 spent 3.9-4.4 ms.
DEFAULT_WORKERS = max(2, os.cpu_count() or 2)
DEFAULT_THREADS = 8


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8443
    http_port: int = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None
    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS
    http_workers: int = 2
    rate_limit: float = 20.0
    max_batches: int = 2              # batch API batches run at once on this node (the others queue)
    ocsp_nonce_rate: float = 50.0     # OCSP answers signed live for a nonce, per client address per second
    request_timeout: float = 5.0      # seconds for a whole request (headers and body), both listeners
    trusted_proxies: tuple[str, ...] = field(default=())
    client_cert_header: str | None = None
    default_policy: str | None = None
    timeout: int = 30
    handshake_timeout: float = 10.0   # seconds a client has for its whole TLS handshake
    idle_timeout: float = 15.0        # seconds of silence after which a connection is closed
    rate_limit_scope: str = "cluster"  # cluster: buckets in the database (PostgreSQL); node: this node's
    load_balancers: tuple[str, ...] = field(default=())   # PROXY protocol (HTTPS), X-Forwarded-For (HTTP) from these


def _gunicorn(factory, options: dict):
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            return factory()

    return _App()


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_cas: Path


def _https_body_limit(path: str) -> int:
    from device_ca.web.batches import MAX_BATCH_BYTES
    from device_ca.web.est_codec import MAX_BODY

    return MAX_BATCH_BYTES if path.startswith("/api/v1/batches") else MAX_BODY


def _https_factory(options: ServeOptions, linter, limiter, tls: TlsFiles):
    def build():
        """The HTTPS listener's site, built in each worker after the fork: the EST and batch API
        Flask app on ``options.threads`` threads, behind TLS with optional client certificates."""
        from device_ca.keycloak.outbox import start_drainer
        from device_ca.ra.batch_queue import BatchQueue
        from device_ca.ra.janitor import Janitor
        from device_ca.ra.stations import Callers
        from device_ca.services import Services
        from device_ca.web.app import create_app
        from device_ca.web.console.csrf import load_secret
        from device_ca.web.front import Limits, Site
        from device_ca.web.metrics import Scrape
        from device_ca.web.tls import ProxySettings
        from device_ca.web.tls_context import server_context

        services = Services(Settings.load(), linter=linter)
        _open_token(services)
        context = server_context(tls.cert, tls.key, tls.client_cas)
        _follow_rollover(services, context)
        limits = _shared(services, limiter, options)
        Janitor(services.publisher, services.ra, services.store.leases, services.checkpoints,
                forget_idle=services.store.rates.forget_idle, root=services.root,
                expiry=services.expiry, publishers=services.signing_publishers,
                retire=services.rollover.retire_due).start()
        if services.settings.keycloak is not None:      # Keycloak outbox, every second
            start_drainer(services.store.queue, lambda: services.keycloak_drainer)
        if services.settings.audit_webhook is not None:  # audit events to the SIEM, every second
            from device_ca.siem.webhook import start_webhook

            start_webhook(services.store.audit_feed, lambda: services.audit_webhook)
        batch_dir = services.settings.home / "batches"

        def run_batch(batch) -> None:
            summary = services.bulk(batch.policy, (), batch_dir / batch.id, actor=batch.created_by, workers=1,
                                    stored=batch).run()
            log.info("batch %s: %d issued, %d failed", summary.batch_id, summary.issued, summary.failed)

        queue = BatchQueue(services.store.batches, run_batch, services.settings.home / "run" / "batches",
                           services.store.leases, limit=options.max_batches)
        queue.kick()                                  # batches queued or orphaned before this start
        app = create_app(est=services.est, policies=services.policies, ca_certificates=services.ca_certificates,
                         cacerts=services.cacerts,
                         health=_health(services), store=services.store, clock=services.clock, bulk=services.bulk,
                         batch_dir=batch_dir, batch_queue=queue,
                         proxies=ProxySettings(frozenset(options.trusted_proxies), options.client_cert_header,
                                               Callers(services.store, services.policies, services.clock,
                                                       services.est.is_ours).proves_proxy),
                         default_policy=options.default_policy, limiter=limits,
                         scrape=Scrape(collectors=(_state(services),)), ra=services.ra,
                         checkpoints=services.checkpoints, keycloak=lambda: services.keycloak,
                         keycloak_url=services.settings.keycloak.url if services.settings.keycloak else None,
                         console_secret=load_secret(services.settings.home))
        quiet_gc()
        return Site(app, threads=options.threads,
                    limits=Limits(deadline=options.request_timeout, idle=options.idle_timeout,
                                  max_body=_https_body_limit),
                    ssl_context=context,
                    handshake_timeout=options.handshake_timeout, balancers=frozenset(options.load_balancers))
    return build


def _follow_rollover(services, context=None) -> None:
    """Every ``FOLLOW_SECONDS`` in this worker: after a rollover (``device-ca ca rollover`` here or
    on another node) issue with the new generation and serve its certificate, without a restart.
    On the HTTPS listener (``context``) the node's CA files and client-CA bundle are written anew
    and the new CA is added to the TLS context's trusted certificates, so that devices of the new
    generation re-enroll over this worker's next handshakes."""
    from device_ca.runtime import start_rounds

    def follow(_) -> None:
        name = services.follow_rollover()
        if name is None or context is None:
            return
        services.admin.export_ca_files()
        context.load_verify_locations(cafile=str(services.admin.client_ca_bundle()))
        log.info("worker %d: issuing with the new issuing CA generation %s", os.getpid(), name)

    start_rounds("rollover follower", lambda: True, lambda: None, follow, FOLLOW_SECONDS, 30.0, log)


def _shared(services, limiter: RateLimiter, options: ServeOptions, prefix: str = ""):
    """On PostgreSQL, one bucket per client across every node (the database's), unless the scope
    asked for is the node; else this node's."""
    if options.rate_limit_scope != "cluster" or services.store.db.engine.dialect.name != "postgresql":
        return limiter
    from device_ca.web.ratelimit import SharedRateLimiter

    return SharedRateLimiter(services.store.rates, limiter, prefix)


def _state(services):
    """What /metrics reads from the database at a scrape (web/metrics.py)."""
    from device_ca.web.metrics import StateCollector

    return StateCollector(services.store, services.clock, expiry=services.expiry,
                          cas=lambda: [p.ca for p in services.signing_publishers()])


def _health(services) -> dict:
    return {"database": services.store.ping, "hsm": services.token.ping}


def _open_token(services) -> None:
    """Log in to the token and find the signing key while the worker starts, not on its first
    request (which would wait for it). A token that is not there yet is not fatal: requests
    answer 503 until it is."""
    try:
        services.issuer
    except DeviceCAError as exc:
        log.warning("worker %d: signing key not available yet: %s", os.getpid(), exc)


def _http_factory(options: ServeOptions, live_budget: RateLimiter):
    def build():
        """The plain-HTTP listener's site, built in each worker after the fork: OCSP and CRLs
        answered on the loop (StatusApp), health, metrics, CA files and the audit checkpoint by the
        Flask app on the worker's threads."""
        from device_ca.ca.ocsp import MAX_REQUEST_BYTES
        from device_ca.services import Services
        from device_ca.web.app import create_public_app
        from device_ca.web.front import Limits, Site
        from device_ca.ra.status_routing import StatusRouter
        from device_ca.web.metrics import Fold, Scrape
        from device_ca.web.status import StatusApp

        services = Services(Settings.load())
        _follow_rollover(services)
        router = StatusRouter(services.signing_publishers, services.ca_certificate)
        status = StatusApp(services.publisher, live_budget=_shared(services, live_budget, options, "ocsp-nonce:"),
                           crls={"root": services.root.latest_crl}, route=router.route,
                           crl_of=services.store.status.latest_crl)
        fold = Fold(services.built_publishers, status.tally)   # the OCSP counts: every second, and at a scrape
        fold.start()
        public = create_public_app(ca_certificates=services.ca_certificates, health=_health(services),
                                   audit_checkpoint=services.checkpoints.newest,
                                   scrape=Scrape(collectors=(_state(services),),
                                                 before=(fold,)))

        def inline(request):
            return status.handle(request.method, request.path, request.target, request.body_bytes(), request.remote)

        quiet_gc()
        return Site(public, inline=inline, threads=2,
                    limits=Limits(deadline=options.request_timeout, idle=options.idle_timeout,
                                  max_body=lambda path: MAX_REQUEST_BYTES),
                    balancers=frozenset(options.load_balancers))
    return build


def _in_child(work, what: str):
    """``work(services)`` in a forked child with objects of its own (the token is opened there and
    dies with it, so the parent may still fork workers); its DeviceCAError comes back as one."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        code = 0
        try:
            from device_ca.services import Services

            services = Services(Settings.load())
            work(services)
        except DeviceCAError as exc:
            os.write(write, f"{exc.kind.name}\0{exc.detail}".encode()[:4000])
            code = 1
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
            os.write(write, f"INTERNAL\0{type(exc).__name__}: {exc}".encode()[:4000])
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode(errors="replace")
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        kind, _, detail = message.partition("\0")
        raise DeviceCAError(Kind[kind] if kind in Kind.__members__ else Kind.INTERNAL,
                            f"{what}: {detail or 'exited ' + str(os.waitstatus_to_exitcode(status))}")


def _prepare(options: ServeOptions) -> None:
    """Before the listeners start: the node's CA files (ca/*.pem, rewritten from the database) and
    its HTTPS server certificate (unless given); an OCSP responder certificate and a CRL made by
    whichever node starting now takes the janitor's lease first (ra/janitor.py), so that no relying
    party meets a server without them."""
    def work(services) -> None:
        from device_ca.ra.janitor import Janitor

        services.admin.export_ca_files()        # the CA files follow the database (a rollover, an upgrade)
        if not options.tls_cert:
            services.admin.ensure_server_certificate(options.host, "system:serve")
        Janitor(services.publisher, services.ra, services.store.leases, root=services.root,
                publishers=services.signing_publishers).prepare()
    _in_child(work, "preparing the server")


def run(options: ServeOptions) -> None:
    settings = Settings.load()
    files.secure_state_dir(settings.home)       # before anything is created there (children inherit the umask)
    if bool(options.tls_cert) != bool(options.tls_key):
        raise DeviceCAError(Kind.MALFORMED, "--tls-cert and --tls-key go together")
    from device_ca.ra.failpoints import Failpoints
    Failpoints.from_env()                       # refused here, before anything starts, unless a test asks
    if settings.audit_webhook is not None:      # a webhook without its secret: refused before anything starts
        from device_ca.siem.webhook import secret_from_env
        secret_from_env()
    _prepare(options)
    cert, key = options.tls_cert or settings.home / "tls" / "server.pem", \
        options.tls_key or settings.home / "tls" / "server.key"
    metrics_dir = settings.home / "run" / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    linter, bundle = _preload(settings)
    common = {"timeout": options.timeout, "graceful_timeout": 10, "errorlog": "-", "loglevel": "warning",
              "accesslog": None, "preload_app": False, "worker_class": "device_ca.web.front.LoopWorker",
              "backlog": 1024}
    live_budget = RateLimiter(options.ocsp_nonce_rate)    # before the fork: shared by the HTTP workers
    http = _gunicorn(_http_factory(options, live_budget), {
        **common, "bind": f"{options.host}:{options.http_port}", "workers": options.http_workers,
        "proc_name": "device-ca-http"})
    limiter = RateLimiter(options.rate_limit)     # before the fork: one set of buckets for every worker
    https = _gunicorn(_https_factory(options, linter, limiter, TlsFiles(cert, key, bundle)), {
        **common, "bind": f"{options.host}:{options.port}", "workers": options.workers,
        "proc_name": "device-ca-https"})

    child = os.fork()
    if child == 0:
        os.setpgrp()                          # the HTTP listener and its workers: one group to stop
        _die_with_parent()
        try:
            http.run()
        finally:
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
    use and the client-CA bundle. The parent never opens PKCS#11; its database connections are
    closed before the fork."""
    import device_ca.web.app  # noqa: F401
    import hsm  # noqa: F401 - python-pkcs11 imported once here; its library is loaded after the fork
    from device_ca.ca import lint
    from device_ca.services import Services

    lint.preload()
    services = Services(settings)
    try:
        bundle = services.admin.client_ca_bundle()
        services.warm_linter()
    finally:
        services.store.db.dispose()
    quiet_gc()
    return services.linter, bundle


def _stop_group(leader: int, grace: float = HTTP_STOP_GRACE) -> None:
    """SIGTERM to the HTTP listener's process group, SIGKILL if it has not exited after ``grace``
    seconds (a master that hangs in its shutdown must not stay running)."""
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
