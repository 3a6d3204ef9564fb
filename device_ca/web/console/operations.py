"""The console's operations pages: pending enrollments with their approve and reject forms, bulk
batches with their progress, Keycloak's sync health with the outbox rows still to apply, and the
audit chain's tail with its verification.

Each view reads or changes through the same functions as the REST API (web/api.py) and the command
line: ``RegistrationAuthority.decide_pending``, ``reports.verify_audit``, ``reports.keycloak_status``,
``BatchRepo.recent``, ``OutboxRepo.backlog``; the collaborators are the ``Console``'s (given by
create_app). The blueprint has already authenticated the caller
(``g.operator``) and checked every POST's CSRF token; a change is checked against the role here,
on the server, whatever the page offered. A form's POST answers 303 to the page it came from
(Post/Redirect/Get), except the audit verification, which changes nothing and shows its result.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from device_ca.errors import DeviceCAError, Kind
from device_ca.ra import operators as roles
from device_ca.ra import reports
from device_ca.web.paging import cursor, split, time_key

NAV = (("console.pending", "Pending"), ("console.batches", "Batches"), ("console.keycloak", "Keycloak"),
       ("console.audit", "Audit"))
PENDING_STATES = ("pending", "approved", "rejected", "issued")
PAGE = 50
BATCHES_SHOWN = 50
BATCH_STATES = ("issued", "failed", "reserved", "pending")       # the order of the progress bar's segments
BAR_WIDTH = 240


def add_operations(bp: Blueprint) -> None:
    """Add the operations pages to the console's blueprint."""
    bp.add_url_rule("/pending", "pending", pending)
    bp.add_url_rule("/pending/<request_id>/approve", "approve", approve, methods=["POST"])
    bp.add_url_rule("/pending/<request_id>/reject", "reject", reject, methods=["POST"])
    bp.add_url_rule("/batches", "batches", batches)
    bp.add_url_rule("/keycloak", "keycloak", keycloak)
    bp.add_url_rule("/audit", "audit", audit)
    bp.add_url_rule("/audit/verify", "audit_verify", audit_verify, methods=["POST"])


def _console():
    from device_ca.web.console import CONFIG

    return current_app.config[CONFIG]


def _may(action: str) -> bool:
    """Whether the caller's role allows ``action`` (PERMISSIONS, the API's one table)."""
    return g.operator.may(action)


def _authorize(action: str) -> None:
    g.operator.authorize(action)


# -- pending enrollments -----------------------------------------------------------------------

def pending() -> str:
    _authorize(roles.READ)
    state = request.args.get("state", "pending")
    if state not in PENDING_STATES + ("all",):
        raise DeviceCAError(Kind.MALFORMED, f"state is one of {', '.join(PENDING_STATES)} or all")
    rows, following = split(_console().store.enrollment.pending(None if state == "all" else state, limit=PAGE + 1,
                                                                after=cursor()),
                            PAGE, lambda r: time_key(r.created_at, r.id))
    return render_template("console/pending.html", requests=rows, state=state, states=PENDING_STATES,
                           following=following, may_decide=_may(roles.PENDING_DECIDE))


def _decide(request_id: str, approve: bool) -> Response:
    _authorize(roles.PENDING_DECIDE)
    _console().ra.decide_pending(request_id, approve, actor=g.operator.actor)
    return redirect(url_for("console.pending"), 303)


def approve(request_id: str) -> Response:
    return _decide(request_id, True)


def reject(request_id: str) -> Response:
    return _decide(request_id, False)


# -- batches -----------------------------------------------------------------------------------

def progress(items: int, counts: Counter) -> list[tuple[str, int, int, int]]:
    """The progress bar's segments: (state, items, x, width) in BAR_WIDTH units, in BATCH_STATES
    order, empty states left out; the widths add up to BAR_WIDTH (the last segment takes the rest
    of the rounding)."""
    shown = [(state, counts.get(state, 0)) for state in BATCH_STATES if counts.get(state, 0)]
    total = max(items, sum(n for _, n in shown), 1)
    segments, x, seen = [], 0, 0
    for state, n in shown:
        seen += n
        end = round(BAR_WIDTH * seen / total)
        segments.append((state, n, x, end - x))
        x = end
    return segments


def batches() -> str:
    _authorize(roles.READ)
    recent = _console().store.batches.recent(BATCHES_SHOWN)
    rows = [(batch, counts, progress(batch.items, counts)) for batch, counts in recent]
    return render_template("console/batches.html", batches=rows, states=BATCH_STATES, bar_width=BAR_WIDTH,
                           shown=BATCHES_SHOWN)


# -- Keycloak ----------------------------------------------------------------------------------

def age(since: dt.datetime | None, now: dt.datetime) -> str | None:
    """A short age: 45s, 12m, 3h 5m, 2d 4h."""
    if since is None:
        return None
    seconds = max(0, int((now - since).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m" if minutes else f"{seconds}s"


def keycloak() -> str:
    _authorize(roles.READ)
    store, now = _console().store, _console().clock.now()
    status = reports.keycloak_status(store, _console().keycloak_url)
    backlog = store.queue.backlog()
    return render_template("console/keycloak.html", status=status, backlog=backlog,
                           oldest_age=age(backlog.oldest, now), now=now)


# -- audit -------------------------------------------------------------------------------------

def tail_page(head: int, before: int | None, size: int = PAGE) -> tuple[int, int, int | None, int | None]:
    """The sequence numbers of one page of the audit tail, newest first: (low, top) such that the
    page holds the events low < seq <= top, then the ``before`` of the next older page and of the
    next newer page (None at either end). ``before`` None: the newest page. Sequence numbers have
    no gaps (store/audit_feed.py), so a page is a range of them."""
    top = head if before is None else min(before, head)
    low = max(0, top - size)
    newer = min(head, top + size) if top < head else None
    return low, top, low if low > 0 else None, newer


def _before() -> int | None:
    raw = request.args.get("before")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise DeviceCAError(Kind.MALFORMED, "before is a sequence number")
    return int(raw)


def audit(verified: dict | None = None) -> str:
    _authorize(roles.READ)
    feed = _console().store.audit_feed
    head = feed.head_seq()
    low, top, older, newer = tail_page(head, _before())
    events = feed.events(low, top - low)[::-1] if top > low else []
    return render_template("console/audit.html", events=events, head=head, older=older, newer=newer,
                           verified=verified)


def audit_verify() -> str:
    """The chain, the signed checkpoints and the certificates checked against each other, as
    ``audit verify`` does; a POST so that no prefetch or crawler starts the full read, allowed to
    every role since it changes nothing."""
    _authorize(roles.READ)
    return audit(verified=reports.verify_audit(_console().store, _console().checkpoints))
