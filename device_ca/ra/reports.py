"""What the operator reads, the same from the command line (``--json``) and from the REST API:
certificates, devices, tokens, pending requests, policies, the audit chain's verification and
Keycloak's state, as plain JSON-ready dicts built from the store's records.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from device_ca.store import CertificateRecord


def iso(value: dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def certificate(r: CertificateRecord) -> dict:
    return {"serial": r.serial, "device_id": r.device_id, "policy": r.policy, "subject": r.subject,
            "status": r.status, "not_before": iso(r.not_before), "not_after": iso(r.not_after),
            "sha256": r.fingerprint, "issued_at": iso(r.issued_at), "revoked_at": iso(r.revoked_at),
            "revocation_reason": r.revocation_reason, "superseded_by": r.superseded_by}


def certificate_detail(store, r: CertificateRecord) -> dict:
    """``certificate`` with what was recorded beside it: a station's scope, an operator's role."""
    shown = certificate(r)
    scope = store.station_scope(r.serial)
    if scope is not None:
        shown["scope"] = scope.as_dict()
    role = store.operator_role(r.serial)
    if role is not None:
        shown["role"] = role
    return shown


def policy(p) -> dict:
    return {"name": p.name, "description": p.description, "subject": p.subject, "key_types": list(p.key_types),
            "san": list(p.san), "eku": list(p.eku), "validity_days": p.validity.days,
            "enrollment": list(p.enrollment), "require_approval": p.require_approval,
            "keycloak": None if p.keycloak is None else {
                "realm": p.keycloak.realm, "access_token_lifespan_s": int(p.keycloak.access_token_lifespan.total_seconds()),
                "default_client_scopes": list(p.keycloak.default_client_scopes),
                "certificate_bound_tokens": p.keycloak.certificate_bound_tokens}}


def token(t, now: dt.datetime) -> dict:
    """A bootstrap token without its secret (only its SHA-256 is kept)."""
    return {"id": t.id, "device_id": t.device_id, "policy": t.policy, "state": t.state(now),
            "created_at": iso(t.created_at), "created_by": t.created_by, "expires_at": iso(t.expires_at),
            "used_at": iso(t.used_at), "serial": t.serial, "withdrawn_at": iso(t.withdrawn_at),
            "withdrawn_by": t.withdrawn_by}


def pending(r) -> dict:
    return {"id": r.id, "policy": r.policy, "device_id": r.device_id, "method": r.method, "state": r.state,
            "created_at": iso(r.created_at), "decided_by": r.decided_by, "serial": r.serial}


def verify_audit(store, checkpoints, expect_head: tuple[int, str] | None = None) -> dict:
    """The hash chain, the signed checkpoints and the certificates table checked against each other
    (``audit verify``): ok, events, head (SEQ:HASH), checkpoints checked and the problems found."""
    report, head = store.verify_audit(expect_head)
    checked, signed_problems = checkpoints.verify()
    report = dataclasses.replace(report, problems=report.problems + tuple(signed_problems))
    return {"ok": report.ok, "events": report.events, "head": head, "checkpoints": checked,
            "problems": list(report.problems)}


def _without_userinfo(url: str | None) -> str | None:
    """``url`` as shown to an operator: credentials written into it (user:password@) left out."""
    if url is None:
        return None
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def keycloak_status(store, keycloak_url: str | None) -> dict:
    """Pending Keycloak changes in the outbox, the last errors of the drainer and of the last sync."""
    from device_ca.keycloak.sync import TOPIC_PREFIX

    entries = store.queue.entries(TOPIC_PREFIX)
    waiting = [e for e in entries if e.state == "pending"]
    applied = [e for e in entries if e.applied_at is not None]
    errors = [e for e in waiting if e.last_error]
    last_error = max(errors, key=lambda e: (e.attempts, e.id), default=None)
    drain_note = store.state.get("keycloak.drain")
    sync_note = store.state.get("keycloak.sync")
    return {
        "configured": keycloak_url is not None, "url": _without_userinfo(keycloak_url),
        "pending": len(waiting), "oldest_pending": iso(waiting[0].created_at) if waiting else None,
        "last_applied": iso(max(e.applied_at for e in applied)) if applied else None,
        "last_error": last_error.last_error if last_error else None,
        "last_drain_error": drain_note[0]["error"] if drain_note else None,
        "last_drain_error_at": iso(drain_note[1]) if drain_note else None,
        "last_sync_at": iso(sync_note[1]) if sync_note else None,
        "last_sync_error": sync_note[0].get("error") if sync_note else None,
        "entries": [{"id": e.id, "topic": e.topic, "device_id": e.device_id, "realm": e.payload.get("realm"),
                     "serial": e.payload.get("serial"), "created_at": iso(e.created_at), "attempts": e.attempts,
                     "next_attempt_at": iso(e.next_attempt_at), "last_error": e.last_error} for e in waiting],
    }


def keycloak_summary(report) -> dict[str, int]:
    return {"create": report.count("create"), "update": report.count("update"), "disable": report.count("disable"),
            "unchanged": report.count("unchanged") + report.count("absent"), "failed": len(report.failures)}


def keycloak_changes(report, show_all: bool = False) -> dict:
    """A sync report (``keycloak sync [--dry-run]``) as JSON: the changes and their summary."""
    failed = {(c.realm, c.client_id): error for c, error in report.failures}
    return {"changes": [{"realm": c.realm, "client_id": c.client_id, "action": c.action, "fields": list(c.fields),
                         "subject_dn": c.desired.subject_dn, "serial": c.desired.serial,
                         "error": failed.get((c.realm, c.client_id))}
                        for c in report.changes if show_all or c.action not in ("unchanged", "absent")],
            "summary": keycloak_summary(report)}


def keycloak_error(exc):
    """A KeycloakError as the domain's error (other exceptions unchanged)."""
    from device_ca.errors import DeviceCAError, Kind
    from device_ca.keycloak import KeycloakError

    if not isinstance(exc, KeycloakError):
        return exc
    if exc.unavailable:
        kind = Kind.KEYCLOAK_UNAVAILABLE
    elif exc.status in (401, 403):
        kind = Kind.UNAUTHORIZED
    elif exc.status == 404:
        kind = Kind.NOT_FOUND
    else:
        kind = Kind.CONFLICT
    return DeviceCAError(kind, str(exc), cause=exc)
