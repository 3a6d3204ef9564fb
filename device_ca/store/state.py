"""Small named facts about the last run of a job (``keycloak.sync``, ``keycloak.drain``): what
happened and when, for status commands. One row per name, replaced by each run."""
from __future__ import annotations

import datetime as dt
import json

from sqlalchemy.exc import IntegrityError

from device_ca.store.db import Database
from device_ca.store.records import utc
from device_ca.store.tables import ServiceStateRow


class StateRepo:
    def __init__(self, db: Database):
        self.db = db

    def record(self, name: str, value: dict, at: dt.datetime) -> None:
        """Remember ``value`` (JSON) as the newest state of ``name``."""
        for attempt in (1, 2):
            try:
                with self.db.write() as s:
                    row = s.get(ServiceStateRow, name)
                    if row is None:
                        s.add(ServiceStateRow(name=name, value=json.dumps(value), at=at))
                    else:
                        row.value, row.at = json.dumps(value), at
                        s.add(row)
                return
            except IntegrityError:            # inserted by another process meanwhile: update it
                if attempt == 2:
                    raise

    def get(self, name: str) -> tuple[dict, dt.datetime] | None:
        with self.db.read() as s:
            row = s.get(ServiceStateRow, name)
            return (json.loads(row.value), utc(row.at)) if row else None
