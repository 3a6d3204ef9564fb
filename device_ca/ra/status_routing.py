"""OCSP for several issuing CA generations (RFC 6960 §4.1.1 CertID): each request goes to the
publisher of the issuing CA its CertIDs name, found by issuerNameHash and issuerKeyHash; a request
naming no issuer served here, or CertIDs of two issuers at once (one response has one signer),
gets ``unauthorized``. With a single issuing CA every request goes straight to its publisher.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from device_ca.ca import ocsp
from device_ca.errors import DeviceCAError
from device_ca.ra.publication import StatusPublisher
from device_ca.runtime import BoundedCache

log = logging.getLogger("device_ca.ra.status_routing")

REFRESH_SECONDS = 30.0          # a generation retired (or added) elsewhere counts within this
RETRY_SECONDS = 5.0             # after a failed read (database down): the table known stays in use
ROUTE_CACHE_BYTES = 4 << 20


class StatusRouter:
    def __init__(self, publishers: Callable[[], list[StatusPublisher]], issuing_certificate: Callable[[str], object],
                 refresh: float = REFRESH_SECONDS):
        """``publishers``: the publishers of every issuing CA that signs status, newest first;
        ``issuing_certificate(name)``: that CA's certificate (no token needed)."""
        self._publishers = publishers
        self._certificate = issuing_certificate
        self._refresh = refresh
        self._table: list[tuple[StatusPublisher, dict]] = []
        self._read_at = float("-inf")
        self._routes = BoundedCache(ROUTE_CACHE_BYTES)     # request bytes -> publisher

    def table(self) -> list[tuple[StatusPublisher, dict]]:
        """The generations served, read again every ``refresh`` seconds. While the database cannot
        be read the table known goes on serving (the generations rarely change; each publisher says
        tryLater itself if it needs the database); with none known yet, DB_UNAVAILABLE."""
        if time.monotonic() - self._read_at >= self._refresh:
            try:
                table = [(p, ocsp.issuer_hashes(self._certificate(p.ca))) for p in self._publishers()]
            except DeviceCAError as exc:
                if not self._table:
                    raise
                log.warning("OCSP routing: the issuing CAs could not be read again (%s); kept the %d known",
                            exc.detail, len(self._table))
                self._read_at = time.monotonic() - self._refresh + min(RETRY_SECONDS, self._refresh)
                return self._table
            self._table, self._read_at = table, time.monotonic()
            self._routes = BoundedCache(ROUTE_CACHE_BYTES)
        return self._table

    def route(self, request_der: bytes) -> StatusPublisher | None:
        """The publisher answering ``request_der``; None if its CertIDs name no issuer served here (or
        several). A request that does not parse goes to the newest publisher, which says so."""
        table = self.table()
        if len(table) == 1:
            return table[0][0]
        known = self._routes.get(request_der)
        if known is not None:
            return known
        try:
            cert_ids = ocsp.parse_request(request_der).cert_ids
        except ocsp.MalformedRequest:
            return table[0][0] if table else None
        found = {id(p): p for c in cert_ids for p, hashes in table if ocsp.names_issuer(c, hashes)}
        if len(found) != 1 or not all(any(ocsp.names_issuer(c, h) for _, h in table) for c in cert_ids):
            return None
        publisher = next(iter(found.values()))
        if len(request_der) <= 512:
            self._routes.put(request_der, publisher, len(request_der) + 64)
        return publisher
