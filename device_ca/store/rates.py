"""Rate-limit buckets every node shares (``rate_buckets``; UNLOGGED on PostgreSQL): one token
bucket per client, refilled and taken in one statement, with the database's clock, so that a
client meets the same limit whichever node answers it."""
from __future__ import annotations

import sqlalchemy as sa

from device_ca.store.db import Database
from device_ca.store.tables import RateBucketRow

_BUCKETS = RateBucketRow.__table__
IDLE_SECONDS = 3600.0          # a bucket untouched this long is full again anyway: forgotten

_TAKE = """
INSERT INTO rate_buckets AS b (key, tokens, at, allowed) VALUES (:key, :burst - 1, {now}, true)
ON CONFLICT (key) DO UPDATE SET
    tokens = CASE WHEN {refill} >= 1 THEN {refill} - 1 ELSE {refill} END,
    at = {greatest}(b.at, excluded.at),
    allowed = {refill} >= 1
RETURNING tokens, allowed
"""
_REFILL = "{least}(:burst, b.tokens + {greatest}(excluded.at - b.at, 0) * :rate)"
_CLOCK = {"postgresql": ("extract(epoch from clock_timestamp())", "least", "greatest"),
          "sqlite": ("((julianday('now') - 2440587.5) * 86400.0)", "min", "max")}


def _statements(dialect: str):
    now, least, greatest = _CLOCK[dialect]
    refill = _REFILL.format(least=least, greatest=greatest)
    take = sa.text(_TAKE.format(now=now, refill=refill, greatest=greatest)).columns(
        sa.column("tokens"), sa.column("allowed"))     # as the driver gives them
    forget = sa.text(f"DELETE FROM rate_buckets WHERE at < {now} - :idle")
    return take, forget


_STATEMENTS = {name: _statements(name) for name in _CLOCK}


class RateRepo:
    def __init__(self, db: Database):
        self.db = db
        self._take, self._forget = _STATEMENTS[db.engine.dialect.name]

    def take(self, key: str, rate: float, burst: int) -> float:
        """Take a token from ``key``'s bucket: 0 if there was one, else the seconds until there is."""
        with self.db.direct() as tx:
            tokens, allowed = tx.execute(self._take, {"key": key, "rate": float(rate), "burst": float(burst)}).first()
        return 0.0 if allowed else (1 - tokens) / rate

    def forget_idle(self, idle: float = IDLE_SECONDS) -> int:
        with self.db.transaction() as c:
            return c.execute(self._forget, {"idle": idle}).rowcount
