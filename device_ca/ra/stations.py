"""Manufacturing stations, the callers of the batch API: what a station may issue is decided by the
operator when its certificate is issued (``scope_for``: device policies, optionally a pattern of
device ids; recorded with the certificate) and checked on every batch (``authorize_batch``).

A station certificate without a recorded scope (one issued before scopes existed) authorises no
batch: it is issued again with ``--allow-policy``.
"""
from __future__ import annotations

import re
from typing import Iterable

from device_ca.errors import DeviceCAError, Kind
from device_ca.policy import Policy
from device_ca.ra.issuance import check_method
from device_ca.store import StationScope

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
        except re.error as exc:
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
