"""CLI: Keycloak in step with the fleet (``device-ca keycloak init-realm | sync | status``)."""
from __future__ import annotations

import json
import sys

import click

from device_ca.errors import DeviceCAError, Kind
from device_ca.ra import reports


_domain_error = reports.keycloak_error


def register(cli: click.Group, services, actor, iso) -> None:
    @cli.group()
    def keycloak() -> None:
        """Keycloak: the realms the policies name, and one client per device."""

    @keycloak.command("init-realm")
    @click.option("--dry-run", is_flag=True, help="Print what would be created or changed; change nothing.")
    @click.option("--event-retention", default="30d", show_default=True,
                  help="How long Keycloak keeps login and admin events (e.g. 7d, 90d).")
    @click.option("--ocsp-url", help="device-ca's OCSP responder as Keycloak reaches it, for policies with "
                  "ocsp_checked_user_flow (default: public_url + /ocsp).")
    @click.pass_context
    def keycloak_init_realm(ctx, dry_run, event_retention, ocsp_url) -> None:
        """Create or update every realm the policies name (idempotent).

        Each realm is enabled, with brute-force detection, login and admin events kept for
        --event-retention, and the client scopes the policies list. Device clients, their claims
        (device_id, device_class, cert_serial) and audiences are then set by `keycloak sync`.
        """
        from device_ca.keycloak import KeycloakError
        from device_ca.keycloak.realm import RealmSetup
        from device_ca.policy.model import parse_duration

        svc = services(ctx)
        try:
            retention = parse_duration(event_retention)
        except ValueError as exc:
            raise DeviceCAError(Kind.MALFORMED, f"--event-retention: {exc}") from None
        setup = RealmSetup(svc.keycloak.admin, svc.policies, retention,
                           ocsp_url or f"{svc.settings.public_url}/ocsp")
        try:
            changes = setup.plan()
            if not changes:
                click.echo("no policy maps devices to a Keycloak realm ([keycloak] realm = ...)")
                return
            for change in changes:
                click.echo(("would " if dry_run and change.action != "unchanged" else "") + change.describe())
            if not dry_run:
                setup.apply([c for c in changes if c.action != "unchanged" or c.scopes])
        except KeycloakError as exc:
            raise _domain_error(exc) from None

    @keycloak.command("sync")
    @click.option("--dry-run", is_flag=True, help="Print the creates, updates and disables; change nothing.")
    @click.option("--json", "as_json", is_flag=True)
    @click.option("--all", "show_all", is_flag=True, help="Also list the clients that are already right.")
    @click.option("--create-realms", is_flag=True, help="Create the policies' realms that do not exist yet "
                  "(as `keycloak init-realm` does).")
    @click.pass_context
    def keycloak_sync(ctx, dry_run, as_json, show_all, create_realms) -> None:
        """Reconcile every device's Keycloak client with the certificates (idempotent).

        Creates the clients of devices with a valid certificate, updates clients whose settings
        differ (including hand edits), disables the clients of revoked, expired and decommissioned
        devices, and settles the pending outbox entries.
        """
        from device_ca.keycloak import KeycloakError

        svc = services(ctx)
        sync = svc.keycloak
        try:
            if create_realms:
                from device_ca.keycloak.realm import RealmSetup

                missing = set(sync.missing_realms(sync.realms()))
                if missing:
                    setup = RealmSetup(sync.admin, svc.policies, ocsp_url=f"{svc.settings.public_url}/ocsp")
                    changes = setup.plan(only=missing)
                    for change in changes:
                        click.echo(("would " if dry_run else "") + change.describe(), err=as_json)
                    if not dry_run:
                        setup.apply(changes)
            if dry_run:
                report = sync.sync(dry_run=True)
            else:
                planned = sync.plan_fleet()
                todo = sum(1 for c in planned.changes if c.action not in ("unchanged", "absent"))
                if todo and not as_json and sys.stderr.isatty():
                    with click.progressbar(length=todo, label="applying", file=sys.stderr) as bar:
                        report = sync.sync(on_change=lambda change: bar.update(1), planned=planned)
                else:
                    report = sync.sync(planned=planned)
        except KeycloakError as exc:
            if not dry_run:
                svc.store.state.record("keycloak.sync", {"error": str(exc)}, svc.clock.now())
            raise _domain_error(exc) from None
        failed = {(c.realm, c.client_id) for c, _ in report.failures}
        if not dry_run:
            svc.store.state.record("keycloak.sync", {"error": report.failures[0][1] if report.failures else None,
                                                     **reports.keycloak_summary(report)}, svc.clock.now())
        if as_json:
            click.echo(json.dumps({"dry_run": dry_run, **reports.keycloak_changes(report, show_all)}, indent=2))
        else:
            for change in report.changes:
                if show_all or change.action not in ("unchanged", "absent"):
                    prefix = "would " if dry_run else ""
                    click.echo(f"{prefix}{change.describe()}")
            counts = reports.keycloak_summary(report)
            click.echo(("dry run: would " if dry_run else "keycloak sync: ")
                       + ", ".join(f"{counts[k]} {k}" for k in ("create", "update", "disable"))
                       + f"; {counts['unchanged']} unchanged" + (f"; {counts['failed']} failed" if failed else ""))
        if report.failures:
            for change, error in report.failures:
                click.echo(f"device-ca: {change.realm}/{change.client_id}: {error}", err=True)
            first = report.failures[0][1]
            raise DeviceCAError(Kind.KEYCLOAK_UNAVAILABLE, f"{len(report.failures)} change(s) failed; first: {first}")

    @keycloak.command("status")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def keycloak_status(ctx, as_json) -> None:
        """Pending Keycloak changes in the outbox and the last error."""
        svc = services(ctx)
        settings = svc.settings.keycloak
        data = reports.keycloak_status(svc.store, settings.url if settings else None)
        pending = data["entries"]
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        click.echo(f"keycloak: {data['url'] or 'not configured (keycloak_url)'}")
        click.echo(f"pending: {data['pending']}" + (f" (oldest {data['oldest_pending']})" if pending else ""))
        click.echo(f"last applied: {data['last_applied'] or '-'}")
        click.echo(f"last error: {data['last_error'] or '-'}")
        click.echo("last drain error: " + (f"{data['last_drain_error_at']}  {data['last_drain_error']}"
                                           if data["last_drain_error"] else "-"))
        click.echo("last sync: " + (f"{data['last_sync_at']}  " + (f"failed: {data['last_sync_error']}"
                                                                   if data["last_sync_error"] else "ok")
                                    if data["last_sync_at"] else "-"))
        for e in data["entries"]:
            click.echo(f"  {e['id']:>6}  {e['topic']:<17} {e['device_id']:<20} {e['realm'] or '-':<12} "
                       f"attempts {e['attempts']}" + (f"  {e['last_error']}" if e["last_error"] else ""))
