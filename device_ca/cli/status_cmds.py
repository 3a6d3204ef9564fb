"""CLI: CRLs, the OCSP responder, decommissioning devices."""
from __future__ import annotations

from pathlib import Path

import click

from device_ca import files
from device_ca.errors import DeviceCAError


def register(cli: click.Group, services, actor, iso) -> None:
    @cli.group()
    def crl() -> None:
        """Certificate revocation lists (RFC 5280 §5)."""

    @crl.command("generate")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the DER CRL here.")
    @click.option("--root", "root", is_flag=True,
                  help="The root's CRL (revoked issuing CAs, valid a year) instead of the issuing CA's; needs the "
                       "root key on the token.")
    @click.pass_context
    def crl_generate(ctx, out, root) -> None:
        """Sign and publish a new CRL (the server also does this after revocations and on a schedule)."""
        svc = services(ctx)
        latest = svc.root.generate_crl(actor()) if root else svc.publisher.generate_crl()
        if out:                                       # for distribution: world-readable
            files.write_atomically(out, latest.der, files.PUBLIC, durable=True)
        path = svc.root.crl_path if root else svc.publisher.crl_path
        click.echo(f"{'root ' if root else ''}CRL {latest.number}: thisUpdate {iso(latest.this_update)}, "
                   f"nextUpdate {iso(latest.next_update)}, written to {out or path}")

    @cli.command()
    @click.pass_context
    def health(ctx) -> None:
        """What /healthz answers only as ok or unavailable: each dependency with the reason it
        failed (the network never sees the reasons). Exits with the first failure's code."""
        svc = services(ctx)
        failed = None
        for name, check in (("database", svc.store.ping), ("hsm", svc.token.ping)):
            try:
                check()
                click.echo(f"{name:<9} ok")
            except DeviceCAError as exc:
                click.echo(f"{name:<9} unavailable: {exc.detail}")
                failed = failed or exc
        if failed is not None:
            raise failed

    @cli.group()
    def ocsp() -> None:
        """The OCSP responder."""

    @ocsp.command("refresh")
    @click.pass_context
    def ocsp_refresh(ctx) -> None:
        """Make sure a delegated responder certificate is valid for more than two days (new key on the
        token if not), then pre-sign the answers that are missing or stale."""
        revocation = services(ctx).publisher
        certificate, created = revocation.ensure_responder()
        click.echo(f"{'new' if created else 'current'} OCSP responder certificate "
                   f"{format(certificate.serial_number, 'x')} until {iso(certificate.not_valid_after_utc)}")
        total = 0
        while signed := revocation.presign():
            total += signed
        click.echo(f"pre-signed {total} OCSP answer(s)")

    @cli.group()
    def device() -> None:
        """Devices."""

    @device.command("decommission")
    @click.argument("device_id")
    @click.pass_context
    def device_decommission(ctx, device_id) -> None:
        """Revoke every certificate of the device (cessationOfOperation) and retire it."""
        revoked = services(ctx).ra.decommission(device_id, actor=actor())
        click.echo(f"decommissioned {device_id}: {len(revoked)} certificate(s) revoked"
                   + (": " + ", ".join(r.serial for r in revoked) if revoked else ""))
