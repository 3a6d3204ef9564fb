"""CLI: ``backup`` and ``restore`` (docs/backup.md)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from device_ca.config import Settings
from device_ca.ra.archive import open_archive
from device_ca.ra.backup import BackupSources, make_backup
from device_ca.ra.restore import RestoreTarget, check_manifest, check_target, check_token, restore, verify_restored

AUDIT_BROKEN = 12          # as 'audit verify'


def register(cli: click.Group, services, actor, iso) -> None:
    @cli.command()
    @click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                  help="The archive to write (refused if it exists; outside the state directory).")
    @click.pass_context
    def backup(ctx, out) -> None:
        """Write one archive: a consistent database snapshot, policies, settings, CA certificates, the
        newest CRL and a manifest with the audit head, signed with the token's audit key. Never a
        PIN or a secret; the keys stay on the token (back it up as docs/backup.md says)."""
        svc = services(ctx)
        done = make_backup(out, BackupSources.of(svc.settings), svc.checkpoints.ensure_key(), svc.store, svc.clock,
                           actor())
        m = done.manifest
        click.echo(f"backup written to {done.path}: {m['database']['kind']} snapshot with "
                   f"{m['database']['certificates']} certificates, audit head {m['audit_head']}, "
                   f"{len(m['members'])} members")
        click.echo(f"sha256 {done.sha256}  (keep it apart from the archive)")
        for note in m["not_archived"]:
            click.echo(f"not archived: {note}")

    @cli.command("restore")
    @click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--check", "check_only", is_flag=True,
                  help="Check the archive against the token and the targets, and write nothing.")
    @click.pass_context
    def restore_(ctx, archive, check_only) -> None:
        """Restore a backup into an empty state directory and an empty database: the archive is
        checked (member hashes, the manifest's signature, the token holds the CA keys) before
        anything is written; then the audit chain is verified against the manifest's head."""
        from device_ca.services import Services

        opened = open_archive(archive)
        try:
            check_manifest(opened)
            settings_file = opened.manifest["members"].get("settings/device-ca.toml")
            settings = Settings.load(file_text=opened.read("settings/device-ca.toml").decode("utf-8")
                                     if settings_file else None)
            svc = ctx.obj = Services(settings)
            warnings = check_token(opened, svc.token)
            pin_file = os.environ.get("DEVICE_CA_HSM_PIN_FILE")
            target = RestoreTarget(settings.home, settings.database_url, settings.policy_dir,
                                   Path(pin_file).absolute() if pin_file else None)
            write_policies = check_target(opened, target)
            m = opened.manifest
            click.echo(f"archive of {m['created_at']} OK: {len(m['members'])} members match the manifest, signed "
                       f"by the audit key of token {svc.token.label!r}, which holds the CA keys")
            for warning in warnings:
                click.echo(f"warning: {warning}", err=True)
            if check_only:
                click.echo(f"targets empty: {settings.home}, the database, policies "
                           f"{'to write' if write_policies else 'already in place'}; nothing written (--check)")
                return
            restore(opened, target, write_policies)
            click.echo(f"restored into {settings.home}, the {m['database']['kind']} database and "
                       f"{settings.policy_dir}{'' if write_policies else ' (policies already in place)'}")
            report = verify_restored(opened, svc.store, svc.checkpoints, svc.token)
        finally:
            opened.close()
        if report.problems:
            for problem in report.problems:
                click.echo(f"restore: {problem}", err=True)
            click.echo("device-ca: the restored state does NOT match the archive's manifest; do not start serve",
                       err=True)
            ctx.exit(AUDIT_BROKEN)
        click.echo(f"audit log OK: {report.events} events, {report.checkpoints} signed checkpoints, head "
                   f"{report.head} as in the manifest")
        click.echo(f"point in time: anything issued or revoked after {m['created_at']} is not in this backup "
                   "(docs/backup.md)")
