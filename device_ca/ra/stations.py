"""Manufacturing stations, the callers of the batch API: what a station may issue is decided by the
operator when its certificate is issued (``scope_for``: device policies, optionally a pattern of
device ids; recorded with the certificate) and checked on every batch (``authorize_batch``).

A station certificate without a recorded scope (one issued before scopes existed) authorises no
batch: it is issued again with ``--allow-policy``.
"""
from __future__ import annotations

import re
import time
from typing import Callable, Iterable

from device_ca.ca.serial import to_hex
from device_ca.errors import DeviceCAError, Kind
from device_ca.policy import Policy
from device_ca.ra.issuance import check_method
from device_ca.store import CertificateRecord, StationScope

GRANT = "batch-api"              # what a station's policy must authorise (policy key 'authorizes')
REPLACE_GRANT = "batch-replace"  # ... to replace devices' current certificates (replace=true)
MAX_PATTERN = 256


def scope_for(policy: Policy, allow_policies: Iterable[str], allow_devices: str | None, policies) -> StationScope | None:
    """The scope of a station certificate of ``policy`` being issued by an operator (None for any
    other certificate). Every allowed policy must exist and be one that is issued in bulk; the
    device pattern must compile. MALFORMED / FORBIDDEN / NOT_FOUND with the reason otherwise."""
    allow_policies = list(dict.fromkeys(allow_policies))
    if GRANT not in policy.authorizes:
        if allow_policies or allow_devices is not None:
            raise DeviceCAError(Kind.MALFORMED, "--allow-policy and --allow-devices scope station certificates; "
                                f"certificates of policy {policy.name} do not authorise the batch API")
        return None
    if not allow_policies:
        raise DeviceCAError(Kind.MALFORMED, f"a {policy.name} certificate is issued with its scope: "
                            "--allow-policy POLICY (repeatable) and optionally --allow-devices REGEX")
    for name in allow_policies:
        allowed = policies.get(name)                             # NOT_FOUND for an unknown policy
        try:
            check_method(allowed, "bulk")
        except DeviceCAError as exc:
            raise DeviceCAError(Kind.MALFORMED, f"--allow-policy {name}: {exc.detail}") from None
    if allow_devices is not None:
        if not allow_devices or len(allow_devices) > MAX_PATTERN:
            raise DeviceCAError(Kind.MALFORMED, f"--allow-devices is a regular expression of 1-{MAX_PATTERN} characters")
        try:
            re.compile(allow_devices)
        except (re.error, OverflowError, RecursionError) as exc:
            raise DeviceCAError(Kind.MALFORMED, f"--allow-devices {allow_devices!r} is not a regular expression: "
                                f"{exc}") from None
    return StationScope(tuple(allow_policies), allow_devices)


def authorize_batch(serial: str, granted: tuple[str, ...], scope: StationScope | None, policy: Policy,
                    replace: bool) -> None:
    """May the station holding certificate ``serial`` (its policy authorising ``granted``, the
    operator having given it ``scope``) issue a batch of ``policy``, replacing current certificates
    if ``replace``? FORBIDDEN with the reason if not; checked before the batch is read."""
    if GRANT not in granted:
        raise DeviceCAError(Kind.FORBIDDEN, "this certificate does not authorise the batch API")
    check_method(policy, "bulk")
    if replace and REPLACE_GRANT not in granted:
        raise DeviceCAError(Kind.FORBIDDEN, "this station may not replace devices' certificates "
                            f"(its policy does not authorise {REPLACE_GRANT})")
    if scope is None:
        raise DeviceCAError(Kind.FORBIDDEN, f"station certificate {serial} was issued without a scope; an operator "
                            "issues the station a new one with --allow-policy")
    if policy.name not in scope.policies:
        raise DeviceCAError(Kind.FORBIDDEN, f"this station may issue {', '.join(scope.policies)} only, "
                            f"not {policy.name}")


def authorize_devices(scope: StationScope, device_ids: Iterable[str]) -> None:
    """Are all of ``device_ids`` within the station's scope? FORBIDDEN naming the first that is not,
    before anything of the batch is stored."""
    if scope.devices is not None:
        pattern = re.compile(scope.devices)
        for device_id in device_ids:
            if not pattern.fullmatch(device_id):
                raise DeviceCAError(Kind.FORBIDDEN, f"device id {device_id!r} is outside this station's scope "
                                    f"({scope.devices})")


class Callers:
    """What the holder of a client certificate may do as a caller: the ``authorizes`` of its
    policy, if the certificate is one this CA issued and it is good and unexpired (nothing
    otherwise). ``proves_proxy`` answers whether a TLS peer is a front proxy whose header may name
    the client certificate, remembered per certificate for ``ttl`` seconds (a revoked proxy
    certificate stops working within that time)."""

    PROXY = "proxy"

    def __init__(self, store, policies, clock, is_ours: Callable, ttl: float = 10.0):
        self.store = store
        self.policies = policies
        self.clock = clock
        self.is_ours = is_ours
        self.ttl = ttl
        self._proxies: dict[int, tuple[float, bool]] = {}

    def holder(self, certificate) -> tuple[CertificateRecord, tuple[str, ...]]:
        """The certificate's record and what its policy authorises; UNAUTHORIZED if this CA did
        not issue it or it is not good and unexpired."""
        if not self.is_ours(certificate):
            raise DeviceCAError(Kind.UNAUTHORIZED, "client certificate was not issued by this CA")
        record = self.store.certificate(to_hex(certificate.serial_number))
        if record is None or record.status != "good" or record.not_after <= self.clock.now():
            raise DeviceCAError(Kind.UNAUTHORIZED, "client certificate is revoked, expired or unknown")
        try:
            return record, self.policies.get(record.policy).authorizes
        except DeviceCAError:                         # its policy file is gone: it authorises nothing
            return record, ()

    def grants(self, certificate) -> tuple[str, ...]:
        try:
            return self.holder(certificate)[1]
        except DeviceCAError as exc:
            if exc.kind is not Kind.UNAUTHORIZED:
                raise
            return ()

    def proves_proxy(self, certificate) -> bool:
        now = time.monotonic()
        known = self._proxies.get(certificate.serial_number)
        if known is not None and known[0] > now:
            return known[1]
        proved = self.PROXY in self.grants(certificate)
        if len(self._proxies) > 1024:
            self._proxies.clear()
        self._proxies[certificate.serial_number] = (now + self.ttl, proved)
        return proved
