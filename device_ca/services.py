"""The composition root: settings in, each object built once (lazily) and handed only the
collaborators it uses. No workflow lives here, and nothing below receives this container: the
CLI (a click context) and the server's process factories are its only users.

Nothing here opens PKCS#11 until a signer is needed, so a process may build ``Services`` and
fork before the first signature (SoftHSM must be initialised after a fork).
"""
from __future__ import annotations

import functools
import os

from cryptography import x509

from device_ca import files
from device_ca.ca.clock import Clock, SystemClock
from device_ca.ca.issuer import Issuer, Linter, PublicUrls
from device_ca.ca.lint import pkilint_gate
from device_ca.ca.template_lint import TemplateLinter
from device_ca.config import Settings
from device_ca.errors import DeviceCAError, Kind
from device_ca.policy import Policies
from device_ca.ra.administration import ISSUING, ROOT, CaAdministration, ca_certificates, warm_linter
from device_ca.ra.authority import RegistrationAuthority
from device_ca.ra.failpoints import Failpoints
from device_ca.store import Store
from device_ca.token import CaToken

_DEFAULT = object()


class Services:
    def __init__(self, settings: Settings, clock: Clock | None = None, linter: Linter | None = _DEFAULT):
        self.settings = settings
        self.clock = clock or SystemClock()
        if linter is _DEFAULT:
            linter = TemplateLinter(pkilint_gate) if settings.lint == "template" else pkilint_gate
        self.linter = linter

    @functools.cached_property
    def failpoints(self) -> Failpoints:
        return Failpoints.from_env()

    @functools.cached_property
    def store(self) -> Store:
        files.secure_state_dir(self.settings.home)
        return Store(self.settings.database_url)

    @functools.cached_property
    def policies(self) -> Policies:
        return Policies.load(self.settings.policy_dir)

    @functools.cached_property
    def token(self) -> CaToken:
        import hsm

        return CaToken(lambda: hsm.TokenConfig(module=self.settings.hsm_module, token_label=self.settings.hsm_token,
                                               pin=hsm.pin_from_env()))

    def ca_certificates(self) -> dict[str, x509.Certificate]:
        """The CA certificates by name; read once per process once a CA exists, and again after a
        rollover (``follow_rollover``)."""
        cached = self.__dict__.get("_ca_certificates")
        if cached:
            return cached
        certs = ca_certificates(self.store)
        if certs:
            self.__dict__["_ca_certificates"] = certs
        return certs

    def ca_certificate(self, name: str) -> x509.Certificate:
        """The CA certificate ``name``; one this process has not seen yet (a rollover elsewhere) is
        read anew. NOT_FOUND if there is none."""
        certs = self.ca_certificates()
        if name not in certs:
            self.__dict__.pop("_ca_certificates", None)
            certs = self.ca_certificates()
        if name not in certs:
            raise DeviceCAError(Kind.NOT_FOUND, f"no CA certificate named {name!r}")
        return certs[name]

    @property
    def issuer(self) -> Issuer:
        """The issuing CA that issues: the newest generation, as this process last read it (at its
        first use, then at each ``follow_rollover``)."""
        name = self.__dict__.get("_current")
        if name is None:
            name = self._read_current()
            if name is None:
                raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
            self.__dict__["_current"] = name
        # a revoked issuing CA still signs its CRL and OCSP answers; the reservation refuses its certificates
        return self.issuer_of(name)

    def _read_current(self) -> str | None:
        from device_ca.ra.rollover import current

        record = current(self.store.ca_certificates())
        return record.name if record is not None else None

    def follow_rollover(self) -> str | None:
        """Read which generation issues now; if a rollover (here or on another node) made a new one
        since this process last looked, and it has its OCSP responder (so every certificate it signs
        can be answered for at once), issue with it from now on and forget the CA certificates read
        before. Returns the new generation's name, None if nothing changed. A running server calls
        this every few seconds in each worker, so no restart is needed after a rollover."""
        known = self.__dict__.get("_current")
        name = self._read_current()
        if name is None or name == known:
            return None
        if known is not None and not self.publisher_of(name).has_responder():
            return None         # not before the janitor's round that makes its CRL and responder
        self.__dict__["_current"] = name
        self.__dict__.pop("_ca_certificates", None)
        return name

    def issuer_of(self, name: str) -> Issuer:
        """The issuing CA ``name`` (any generation) with its key on the token, built once per process."""
        built = self.__dict__.setdefault("_issuers", {})
        if name not in built:
            record = self.store.ca_certificates().get(name)
            if record is None or name == ROOT:
                raise DeviceCAError(Kind.NOT_FOUND, f"no issuing CA named {name!r}")
            built[name] = Issuer(x509.load_der_x509_certificate(record.der), self.token.signer(record.key_label),
                                 self.clock, PublicUrls(self.settings.public_url, name), self.linter)
        return built[name]

    def trusted_issuing(self) -> list[x509.Certificate]:
        """Issuing CAs still valid (not retired, not revoked, not expired), newest first; read anew
        each time, so that a revocation counts at once."""
        from device_ca.ra.rollover import trusted_issuing

        return trusted_issuing(self.store.ca_certificates(), self.clock.now())

    def cacerts(self) -> list[x509.Certificate]:
        """What EST cacerts serves: every issuing CA still valid, newest first, then the root."""
        certs = self.ca_certificates()
        return self.trusted_issuing() + ([certs[ROOT]] if ROOT in certs else [])

    def warm_linter(self, names=None) -> int:
        return warm_linter(self.store, self.policies, self.linter, self.clock, self.settings.public_url, names)

    @functools.cached_property
    def ra(self) -> RegistrationAuthority:
        return RegistrationAuthority(self.store, self.policies, lambda: self.issuer, self.clock,
                                     failpoints=self.failpoints)

    @functools.cached_property
    def expiry(self):
        from device_ca.ra.expiry import ExpiryJob

        return ExpiryJob(self.store, self.policies, self.clock)

    @functools.cached_property
    def admin(self) -> CaAdministration:
        return CaAdministration(self.store, self.token, self.ra, self.clock, self.linter, self.settings.home,
                                self.settings.public_url, lambda: self.policies)

    @functools.cached_property
    def est(self):
        from device_ca.ra.enrollment import EstService

        return EstService(self.ra, self.store, self.policies, self.clock, self.trusted_issuing)

    @functools.cached_property
    def publisher(self):
        """The status publisher of the issuing CA that issued when this process first asked (the
        token is not opened here); the publishers of every generation: ``signing_publishers``."""
        return self.publisher_of(self._read_current() or ISSUING)

    def publisher_of(self, name: str):
        """The CRL and OCSP publisher of the issuing CA ``name``, built once per process."""
        from device_ca.ra.publication import StatusPublisher

        built = self.__dict__.setdefault("_publishers", {})
        if name not in built:
            built[name] = StatusPublisher(self.store, lambda: self.issuer_of(name), self.token, self.clock,
                                          self.settings.home / "crl" / f"{name}.crl", self.linter, name)
        return built[name]

    def built_publishers(self) -> list:
        """The publishers this process has built so far (any generation): whose OCSP counts it folds."""
        return list(self.__dict__.get("_publishers", {}).values())

    def signing_publishers(self) -> list:
        """Publishers of every issuing CA that still signs status (not retired), newest first; read
        anew each time, so that a retirement or a rollover on another node counts at the next round."""
        from device_ca.ra.rollover import generations

        return [self.publisher_of(g.name) for g in reversed(generations(self.store.ca_certificates()))
                if g.signs_status]

    @functools.cached_property
    def rollover(self):
        from device_ca.ra.rollover import IssuingRollover

        return IssuingRollover(self.store, self.token, self.clock, self.linter, self.settings.public_url)

    @functools.cached_property
    def root(self):
        from device_ca.ca.lint import pkilint_crl_gate
        from device_ca.ra.rootca import RootAuthority

        return RootAuthority(self.store, self.token, self.clock, self.settings.home / "crl" / f"{ROOT}.crl",
                             pkilint_crl_gate if self.linter is not None else None)

    @functools.cached_property
    def checkpoints(self):
        from device_ca.ra.checkpoints import AuditCheckpoints

        return AuditCheckpoints(self.store, self.token, self.clock)

    def bulk(self, policy_name: str, inputs, out_dir, **options):
        """A run of a batch: the parent reads and records the batch, each forked worker builds its
        own signing pipeline (database connections and PKCS#11 session of its own)."""
        from device_ca.ra.bulk import BulkIssuance, Signing

        settings, linter, parent = self.settings, self.linter, os.getpid()

        def signing() -> Signing:
            if os.getpid() == parent:             # one worker: the run's own process
                return Signing(self.ra.pipeline, self.store.batches, self.store.current_certificates)
            worker = Services(settings, linter=linter)
            return Signing(worker.ra.pipeline, worker.store.batches, worker.store.current_certificates)

        def before_fork() -> None:
            from device_ca.ca import lint

            lint.preload()
            self.warm_linter([policy_name])
            self.store.db.dispose()

        return BulkIssuance(self.store, self.clock, self.policies.get(policy_name), signing, inputs, out_dir,
                            before_fork=before_fork, **options)

    @functools.cached_property
    def keycloak(self):
        """The Keycloak reconciler (``keycloak_url`` and credentials must be configured)."""
        from device_ca.keycloak import admin_client
        from device_ca.keycloak.sync import KeycloakSync

        settings = self.settings.keycloak
        if settings is None:
            raise DeviceCAError(Kind.NOT_FOUND, "Keycloak is not configured: set keycloak_url in device-ca.toml "
                                "or DEVICE_CA_KEYCLOAK_URL")

        def trust_anchor() -> x509.Certificate:
            certs = self.ca_certificates()
            if ROOT not in certs:
                raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
            return certs[ROOT]

        return KeycloakSync(admin_client(settings), self.store, self.policies, trust_anchor, self.clock,
                            concurrency=settings.concurrency)

    @functools.cached_property
    def keycloak_drainer(self):
        from device_ca.keycloak.outbox import OutboxDrainer

        return OutboxDrainer(self.keycloak, self.store.queue, self.store.leases, self.clock, state=self.store.state)

    @functools.cached_property
    def audit_webhook(self):
        """The SIEM webhook's deliverer (``audit_webhook_url`` and the secret must be configured)."""
        from device_ca.siem.webhook import Receiver, WebhookDeliverer, secret_from_env

        settings = self.settings.audit_webhook
        if settings is None:
            raise DeviceCAError(Kind.NOT_FOUND, "no audit webhook: set audit_webhook_url in device-ca.toml or "
                                "DEVICE_CA_AUDIT_WEBHOOK_URL")
        receiver = Receiver(settings, secret_from_env())
        return WebhookDeliverer(self.store.audit_feed, self.store.leases, self.clock, receiver.post, receiver.where)
