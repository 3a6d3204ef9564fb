"""Counters that layers below the web edge move: issuances (ra/), token errors (token.py), database
errors (store/). The web edge's own metrics and the scrape are in web/metrics.py; docs/metrics.md
lists them all.

prometheus_client chooses between in-process and multiprocess values when it is first imported
(PROMETHEUS_MULTIPROC_DIR, set by ``device-ca serve`` before its workers start, and by the CLI
when a server runs on its state directory), so the counters are made on first use: importing
device-ca never imports prometheus_client. A counter that cannot be moved (an unwritable metrics
directory) is logged, never raised: a metric must not change the outcome it counts.
"""
from __future__ import annotations

import functools
import logging

from device_ca.errors import Kind

log = logging.getLogger("device_ca.metrics")

# The kinds that say something is wrong on this side; every other kind is the request's refusal.
ERROR_KINDS = frozenset({Kind.HSM_UNAVAILABLE, Kind.DB_UNAVAILABLE, Kind.KEYCLOAK_UNAVAILABLE, Kind.CA_UNAVAILABLE,
                         Kind.INTERNAL})


def outcome(kind: Kind | None) -> tuple[str, str]:
    """(outcome, reason) labels: issued, or refused / error with the kind."""
    if kind is None:
        return "issued", ""
    return ("error" if kind in ERROR_KINDS else "refused"), kind.value


def issuance(policy: str, path: str, kind: Kind | None, n: int = 1) -> None:
    _inc("issuances", (policy, path, *outcome(kind)), n)


def hsm_error(operation: str) -> None:
    _inc("hsm", (operation,))


def database_error() -> None:
    _inc("database", ())


@functools.cache
def counters() -> dict:
    from prometheus_client import Counter

    return {
        "issuances": Counter(
            "device_ca_issuances_total",
            "Certificate requests of a known policy, by policy, path (cli, est, bulk), outcome (issued, refused, "
            "error) and reason (the error kind of a refusal or error)", ["policy", "path", "outcome", "reason"]),
        "hsm": Counter("device_ca_hsm_errors_total", "Token (PKCS#11) operations that failed, by operation",
                       ["operation"]),
        "database": Counter("device_ca_database_errors_total",
                            "Database operations that failed for want of a database (not constraint violations)"),
    }


def _inc(name: str, labels: tuple, n: int = 1) -> None:
    if not n:
        return
    try:
        counter = counters()[name]
        (counter.labels(*labels) if labels else counter).inc(n)
    except Exception:  # noqa: BLE001 - see the module's docstring
        log.warning("could not count %s %s", name, labels, exc_info=True)
