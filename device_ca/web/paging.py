"""Cursor paging of the REST API's listings: ``limit`` (at most MAX_LIMIT) and an opaque ``cursor``,
the base64 of the last key of the page before (a sequence number, or a time and an id); each answer
carries ``next``, the cursor of the following page (null on the last).
"""
from __future__ import annotations

import base64
import datetime as dt
import json

from flask import Response, jsonify, request

from device_ca.errors import malformed

DEFAULT_LIMIT, MAX_LIMIT = 100, 500


def limit() -> int:
    raw = request.args.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise malformed(f"limit is a number from 1 to {MAX_LIMIT}")
    return int(raw)


def cursor(sequence: bool = False):
    """The decoded ``cursor`` argument (what ``encode`` made of a page's last key: a sequence number
    if ``sequence``, else a time and an id), or None; 400 for anything else."""
    raw = request.args.get("cursor")
    if not raw:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(raw.encode() + b"=" * (-len(raw) % 4)))
        if sequence:
            if type(value) is not int or value < 0:
                raise ValueError
            return value
        at, key = value
        at = dt.datetime.fromisoformat(at)
        if at.tzinfo is None or not isinstance(key, str):
            raise ValueError
        return at, key
    except (ValueError, TypeError):
        raise malformed("cursor is not one this API gave out") from None


def encode(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def split(rows: list, limit: int, key) -> tuple[list, str | None]:
    """The page in ``rows`` (``limit`` + 1 were asked for, to know whether more follow) and the
    cursor of the following page (None on the last); ``key(row)``: a row's paging key."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode(key(rows[-1]))


def page(rows: list, limit: int, key, render) -> Response:
    """One page of ``rows`` as JSON (see ``split``)."""
    rows, following = split(rows, limit, key)
    return jsonify({"items": [render(r) for r in rows], "next": following})


def time_key(at: dt.datetime, key: str) -> list:
    return [at.isoformat(), key]
