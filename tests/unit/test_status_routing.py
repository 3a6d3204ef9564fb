"""OCSP routing between issuing CA generations (ra/status_routing.py) while the database that says
which generations exist cannot be read: the table known goes on serving; with none known the
error is DB_UNAVAILABLE, which the OCSP edge answers with tryLater (never internalError)."""
from __future__ import annotations

import pytest
from cryptography.x509 import ocsp as x509_ocsp

from device_ca.errors import DeviceCAError, Kind
from device_ca.ra.status_routing import StatusRouter
from device_ca.web.status import StatusApp
from helpers import software_ca


class Publisher:
    """What the router and the edge use of a StatusPublisher."""
    def __init__(self, ca: str):
        self.ca = ca
        self.answered = {}

    def unsigned(self, status):
        from device_ca.ra.publication import OcspAnswer
        from device_ca.ca import ocsp

        self.answered[(status, "unsigned")] = self.answered.get((status, "unsigned"), 0) + 1
        return OcspAnswer(ocsp.error_response(status))

    def respond(self, request_der, live_allowed=None):
        return self.unsigned("unauthorized")        # which publisher answered shows in ``answered``

    def latest_crl(self):
        return None


class Database:
    def __init__(self, publishers):
        self.publishers, self.down, self.reads = publishers, False, 0

    def read(self):
        self.reads += 1
        if self.down:
            raise DeviceCAError(Kind.DB_UNAVAILABLE, "database unavailable")
        return list(self.publishers)


def _certificates():
    return {name: software_ca()[0] for name in ("issuing", "issuing-2")}


def test_the_known_generations_keep_serving_while_the_database_is_down():
    certs = _certificates()
    new, old = Publisher("issuing-2"), Publisher("issuing")
    database = Database([new, old])
    router = StatusRouter(database.read, certs.__getitem__, refresh=0)
    assert [p for p, _ in router.table()] == [new, old]
    database.down = True
    assert [p for p, _ in router.table()] == [new, old]       # kept, not raised
    reads = database.reads
    router.table()
    assert database.reads == reads + 1                         # refresh=0: tried again, still kept
    database.down = False
    database.publishers = [new]
    assert [p for p, _ in router.table()] == [new]            # back: the new table counts


def test_no_table_known_and_no_database_is_try_later_at_the_edge():
    certs = _certificates()
    database = Database([Publisher("issuing")])
    database.down = True
    router = StatusRouter(database.read, certs.__getitem__)
    with pytest.raises(DeviceCAError) as raised:
        router.table()
    assert raised.value.kind is Kind.DB_UNAVAILABLE
    default = Publisher("issuing")
    app = StatusApp(default, route=router.route)
    status, _, body = app.handle("POST", "/ocsp", "/ocsp", b"0\x03\x02\x01\x00", "127.0.0.1")
    assert status == 200
    assert x509_ocsp.load_der_ocsp_response(body).response_status == x509_ocsp.OCSPResponseStatus.TRY_LATER
    assert default.answered == {("tryLater", "unsigned"): 1}
