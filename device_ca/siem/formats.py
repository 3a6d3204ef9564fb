"""Audit events as a receiver reads them: one JSON object per event (JSON lines, webhook bodies)
or one ArcSight CEF line (Common Event Format, revision 25).

The JSON form carries what the chain's hash covers (store/audit.py ``event_hash``): ``seq``,
``at``, ``action``, ``actor``, ``serial``, ``device_id``, ``details`` and ``prev_hash``, with the
``hash``; ``verify_link`` is the check a receiver runs, written out in docs/audit-export.md.
"""
from __future__ import annotations

import hashlib
import json
from importlib import metadata

from device_ca.store.records import LoggedEvent

FORMATS = ("jsonl", "cef")
# CEF severity 0-10; an operator's decision against a device is worth a look, the rest is routine.
SEVERITY = {"certificate.revoked": 6, "device.decommissioned": 6, "token.withdrawn": 5, "enrollment.rejected": 5,
            "ca.created": 7}
DEFAULT_SEVERITY = 3


def event_dict(event: LoggedEvent) -> dict:
    return {"seq": event.seq, "at": event.at.strftime("%Y-%m-%dT%H:%M:%SZ"), "action": event.action,
            "actor": event.actor, "serial": event.serial, "device_id": event.device_id,
            "details": json.loads(event.details), "prev_hash": event.prev_hash, "hash": event.hash}


def jsonl(event: LoggedEvent) -> str:
    return json.dumps(event_dict(event), ensure_ascii=False, separators=(",", ":"))


def canonical_details(details: dict) -> str:
    """The form of ``details`` the hash covers: keys sorted, no whitespace, UTF-8 unescaped."""
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def recompute_hash(event: dict) -> str:
    """What a receiver computes from a JSON event to check its ``hash`` (and so the chain)."""
    body = json.dumps([event["seq"], event["at"], event["action"], event["actor"], event["serial"],
                       event["device_id"], canonical_details(event["details"]), event["prev_hash"]],
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def cef(event: LoggedEvent) -> str:
    extension = [("rt", str(int(event.at.timestamp() * 1000))), ("externalId", str(event.seq)),
                 ("act", event.action), ("suser", event.actor)]
    for n, (label, value) in enumerate((("serial", event.serial), ("deviceId", event.device_id),
                                        ("hash", event.hash), ("prevHash", event.prev_hash)), start=1):
        if value is not None:
            extension += [(f"cs{n}Label", label), (f"cs{n}", value)]
    extension.append(("msg", event.details))
    header = ["CEF:0", "device-ca", "device-ca", _version(), event.action, event.action,
              str(SEVERITY.get(event.action, DEFAULT_SEVERITY))]
    return "|".join([header[0]] + [_header(h) for h in header[1:]]) + "|" + \
        " ".join(f"{key}={_value(value)}" for key, value in extension)


def render(event: LoggedEvent, form: str) -> str:
    return jsonl(event) if form == "jsonl" else cef(event)


def _header(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")


def _version() -> str:
    try:
        return metadata.version("device-ca")
    except metadata.PackageNotFoundError:
        return "0"
