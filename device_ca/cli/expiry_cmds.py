"""CLI: certificates about to expire or expired (``device-ca expiring``), see docs/expiry.md."""
from __future__ import annotations

import datetime as dt
import json

import click

from device_ca.errors import DeviceCAError, Kind


def left(not_after: dt.datetime, now: dt.datetime) -> str:
    """``12d 3h`` left, or ``expired 2d ago`` (whole minutes below an hour)."""
    seconds = int((not_after - now).total_seconds())
    span = abs(seconds)
    days, rest = divmod(span, 86400)
    text = f"{days}d {rest // 3600}h" if days else f"{rest // 3600}h {rest % 3600 // 60}m" if span >= 3600 \
        else f"{span // 60}m {span % 60}s"
    return text if seconds > 0 else f"expired {text} ago"


def register(cli: click.Group, services, actor, iso) -> None:
    @cli.command()
    @click.option("--within", metavar="DURATION",
                  help="Certificates whose notAfter is within this (e.g. 30d, 12h) instead of each "
                  "policy's renewal window.")
    @click.option("--policy", "policy_name", help="Only this policy's certificates.")
    @click.option("--expired", "include_expired", is_flag=True,
                  help="Also those already past notAfter that were not renewed (lapsed devices).")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def expiring(ctx, within, policy_name, include_expired, as_json) -> None:
        """Good certificates that have not been renewed and expire soon: inside their policy's
        renewal window (default) or within --within, earliest first."""
        from device_ca.policy.model import parse_duration

        svc = services(ctx)
        try:
            span = parse_duration(within) if within is not None else None
        except ValueError as exc:
            raise DeviceCAError(Kind.MALFORMED, f"--within: {exc}") from None
        found = svc.expiry.expiring(span, policy_name, include_expired)
        now = svc.clock.now()
        if as_json:
            click.echo(json.dumps([{"serial": e.serial, "device_id": e.device_id, "policy": e.policy,
                                    "subject": e.subject, "not_after": iso(e.not_after),
                                    "expires_in_s": int((e.not_after - now).total_seconds()),
                                    "expired": e.not_after <= now} for e in found], indent=2))
            return
        if not found:
            scope = f"within {within}" if within else "inside their renewal window"
            click.echo(f"no certificates {scope}" + (f" of policy {policy_name}" if policy_name else ""))
            return
        click.echo(f"{'SERIAL':<36}  {'DEVICE':<20} {'POLICY':<14} {'NOT AFTER':<20} LEFT")
        for e in found:
            click.echo(f"{e.serial:<36}  {e.device_id:<20} {e.policy:<14} {iso(e.not_after):<20} "
                       f"{left(e.not_after, now)}")
