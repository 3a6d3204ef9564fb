"""Named failpoints of the issuance pipeline, so that fault tests hit each step every time on any
machine instead of racing a kill against a request.

``DEVICE_CA_FAILPOINT`` holds ``point:action[:device-pattern]`` entries, comma-separated, e.g.
``after-reserve:kill`` or ``sign:hsm-error:br-9*``. Points: ``after-reserve``, ``sign``,
``after-sign``, ``before-record``, ``record``. Actions: ``kill`` (SIGKILL this process, as a crash
or ``kill -9`` would), ``hsm-error`` (the token fails), ``db-error`` (the database fails), ``pause``
(wait ``PAUSE_SECONDS`` and go on: a test kills something else meanwhile, e.g. the database's
primary between a reservation and its record). The pattern (fnmatch) limits the point to
certificates of matching device ids.

Read once, when the pipeline is wired; inert unless set. Setting it without
``DEVICE_CA_TEST_FAILPOINTS=1`` is refused, so that a production process cannot be started with one
by accident.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

from device_ca.errors import DeviceCAError, Kind

log = logging.getLogger("device_ca.failpoints")

POINTS = ("after-reserve", "sign", "after-sign", "before-record", "record")
ACTIONS = ("kill", "hsm-error", "db-error", "pause")
PAUSE_SECONDS = 4.0
VARIABLE, TEST_FLAG = "DEVICE_CA_FAILPOINT", "DEVICE_CA_TEST_FAILPOINTS"


@dataclass(frozen=True)
class Failpoint:
    point: str
    action: str
    pattern: str = "*"


class Failpoints:
    """The armed failpoints of this process (none in production)."""

    def __init__(self, armed: Iterable[Failpoint] = ()):
        self._armed: dict[str, list[Failpoint]] = {}
        for f in armed:
            self._armed.setdefault(f.point, []).append(f)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Failpoints":
        spec = environ.get(VARIABLE, "").strip()
        if not spec:
            return cls()
        if environ.get(TEST_FLAG) != "1":
            raise DeviceCAError(Kind.MALFORMED, f"{VARIABLE} is set but {TEST_FLAG}=1 is not: failpoints are for "
                                "tests only; unset it")
        armed = []
        for entry in spec.split(","):
            point, _, rest = entry.strip().partition(":")
            action, _, pattern = rest.partition(":")
            if point not in POINTS or action not in ACTIONS:
                raise DeviceCAError(Kind.MALFORMED, f"{VARIABLE}: {entry!r} is not point:action[:pattern] with a "
                                    f"point of {', '.join(POINTS)} and an action of {', '.join(ACTIONS)}")
            armed.append(Failpoint(point, action, pattern or "*"))
        log.warning("failpoints armed: %s", spec)
        return cls(armed)

    def hit(self, point: str, device_ids: Iterable[str]) -> None:
        """Fire ``point`` if it is armed for one of these devices."""
        if not self._armed:
            return
        for f in self._armed.get(point, ()):
            if any(fnmatch.fnmatchcase(d, f.pattern) for d in device_ids):
                log.warning("failpoint %s:%s fires", point, f.action)
                if f.action == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if f.action == "pause":
                    time.sleep(PAUSE_SECONDS)
                    continue
                if f.action == "hsm-error":
                    raise DeviceCAError(Kind.HSM_UNAVAILABLE, f"failpoint {point}: token unavailable")
                raise DeviceCAError(Kind.DB_UNAVAILABLE, f"failpoint {point}: database unavailable")


NONE = Failpoints()
