"""The operator's command line (click): one group, sub-groups per object, one lazily built context.

Every error is one line on stderr and a non-zero exit code chosen by the error's kind
(see EXIT_CODES and the README); listings take ``--json``.
"""
from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_ca import files
from device_ca.ca.authority import CaProfile
from device_ca.ca.serial import to_hex
from device_ca.config import Settings
from device_ca.errors import DeviceCAError, Kind
from device_ca.policy import load_policy
from device_ca.ra.administration import CA_KEY_TYPES, ISSUING, ROOT
from device_ca.ra import reports
from device_ca.ra.authority import REASONS, find_certificate
from device_ca.ra.operators import ROLES
from device_ca.ra.rollover import current, generations
from device_ca.ra.rootca import CA_REVOCATION_REASONS, revoke_certificates_of
from device_ca.services import Services

EXIT_CODES = {
    Kind.MALFORMED: 3, Kind.POLICY_REJECTED: 4, Kind.NOT_FOUND: 5, Kind.CONFLICT: 6,
    Kind.UNAUTHORIZED: 7, Kind.FORBIDDEN: 7, Kind.PENDING: 8, Kind.HSM_UNAVAILABLE: 9,
    Kind.DB_UNAVAILABLE: 10, Kind.INTERNAL: 11, Kind.KEYCLOAK_UNAVAILABLE: 13, Kind.CA_UNAVAILABLE: 14,
}
AUDIT_BROKEN = 12


class CaGroup(click.Group):
    """Turns domain errors into one line and an exit code, once, for every command."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DeviceCAError as exc:
            click.echo(f"device-ca: {exc.detail}", err=True)
            ctx.exit(EXIT_CODES[exc.kind])
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:   # one line for the operator; the traceback only on request
            if os.environ.get("DEVICE_CA_DEBUG"):
                raise
            click.echo(f"device-ca: internal error ({type(exc).__name__}); set DEVICE_CA_DEBUG=1 for details",
                       err=True)
            ctx.exit(EXIT_CODES[Kind.INTERNAL])


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return f"cli:uid{os.getuid()}"


def services(ctx: click.Context) -> Services:
    if ctx.obj is None:
        settings = Settings.load()
        _count_into_server(settings.home)
        ctx.obj = Services(settings)
    return ctx.obj


def _count_into_server(home: Path) -> None:
    """What this command counts (issuances, token and database errors: device_ca/metrics.py) goes to
    the /metrics of a ``device-ca serve`` on the same state directory, when there is one: into its
    multiprocess directory, before anything imports prometheus_client."""
    directory = home / "run" / "metrics"
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ and directory.is_dir() and os.access(directory, os.W_OK):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def _iso(value: dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


@click.group(cls=CaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log workflow steps to stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """device-ca: a certificate authority for IoT device identity.

    Settings come from DEVICE_CA_* environment variables and $DEVICE_CA_HOME/device-ca.toml;
    the HSM PIN from DEVICE_CA_HSM_PIN or DEVICE_CA_HSM_PIN_FILE, never from the command line.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


# -- CA -------------------------------------------------------------------------------------

@cli.command()
@click.option("--key-type", type=click.Choice(CA_KEY_TYPES), default="ec:P-256", show_default=True)
@click.option("--organization", default="device-ca", show_default=True, help="O= of the CA names.")
@click.option("--permitted-dns", multiple=True, help="Name constraint on the issuing CA (repeatable).")
@click.option("--permitted-uri", multiple=True, help="URI host name constraint on the issuing CA (repeatable).")
@click.pass_context
def init(ctx, key_type, organization, permitted_dns, permitted_uri) -> None:
    """Create the root and issuing CA keys on the token and their certificates."""
    svc = services(ctx)
    profile = CaProfile(organization=organization, permitted_dns=tuple(permitted_dns),
                        permitted_uri=tuple(permitted_uri))
    certs = svc.admin.init_ca(key_type, profile, _actor())
    for name, cert in certs.items():
        click.echo(f"{name}: {cert.subject.rfc4514_string()}  serial {to_hex(cert.serial_number)}  "
                   f"until {_iso(cert.not_valid_after_utc)}")
    click.echo(f"certificates written to {svc.settings.home / 'ca'}")


@cli.group()
def ca() -> None:
    """The CA certificates."""


@ca.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ca_show(ctx, as_json) -> None:
    """Subject, serial, validity, fingerprint and key location of the root and issuing CA."""
    svc = services(ctx)
    records = svc.store.ca_certificates()
    if not records:
        raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
    rows = []
    for name in [ROOT] + [g.name for g in generations(records)]:
        r = records[name]
        cert = x509.load_der_x509_certificate(r.der)
        rows.append({"name": name, "subject": cert.subject.rfc4514_string(), "serial": to_hex(cert.serial_number),
                     "not_before": _iso(cert.not_valid_before_utc), "not_after": _iso(cert.not_valid_after_utc),
                     "sha256": hashlib.sha256(r.der).hexdigest(), "key_type": r.key_type,
                     "key": f"pkcs11:token={svc.settings.hsm_token};object={r.key_label}", "status": r.status,
                     "revoked_at": _iso(r.revoked_at), "revocation_reason": r.revocation_reason})
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']}:")
        for key in ("subject", "serial", "not_before", "not_after", "sha256", "key_type", "key", "status"):
            click.echo(f"  {key:<11} {row[key]}")
        if row["revoked_at"]:
            click.echo(f"  {'revoked':<11} {row['revoked_at']} ({row['revocation_reason']})")


@ca.command("revoke-issuing")
@click.argument("name", default=ISSUING)
@click.option("--reason", required=True, type=click.Choice(CA_REVOCATION_REASONS),
              help="RFC 5280 reason; cACompromise when its key may be known to someone else.")
@click.option("--revoke-certificates", is_flag=True,
              help="Also revoke every good certificate it issued (cACompromise): relying parties that check only "
                   "the leaf (OCSP, its CRL) refuse them too, and Keycloak disables their clients.")
@click.option("--yes", is_flag=True, help="Confirm: every certificate of this CA stops validating, and it issues "
                                          "no more.")
@click.pass_context
def ca_revoke_issuing(ctx, name, reason, revoke_certificates, yes) -> None:
    """Revoke the issuing CA NAME (default: issuing) in the root's CRL, signed at once (root key needed).
    Relying parties that check the whole path refuse every certificate it issued; it issues no more."""
    if not yes:
        raise DeviceCAError(Kind.MALFORMED, f"revoking issuing CA {name!r} invalidates every certificate it issued "
                            "and stops issuance with it; repeat with --yes to do it (nothing was changed)")
    svc = services(ctx)
    try:
        record, crl = svc.root.revoke_issuing(name, reason, _actor())
        click.echo(f"issuing CA {name} (serial {record.serial}) revoked: {reason}; root CRL {crl.number} published "
                   f"to {svc.root.crl_path} (nextUpdate {_iso(crl.next_update)})")
    except DeviceCAError as exc:
        if exc.kind is not Kind.CONFLICT or not revoke_certificates:
            raise
        click.echo(f"{exc.detail}; revoking its certificates")         # a run interrupted before, resumed
    if revoke_certificates:
        revoked = revoke_certificates_of(svc.ra, svc.store, name, _actor())
        click.echo(f"{len(revoked)} certificate(s) of {name} revoked (cACompromise)")
    if not any(r.status == "active" for n, r in svc.store.ca_certificates().items() if n != ROOT):
        click.echo("no active issuing CA is left: enrollment and issuance are refused until a new issuing CA "
                   "exists", err=True)


@ca.command("rollover")
@click.option("--key-type", type=click.Choice(CA_KEY_TYPES), default=None,
              help="Key type of the new issuing CA (default: the current one's).")
@click.pass_context
def ca_rollover(ctx, key_type) -> None:
    """Generate a new issuing CA key on the token, have the root sign its certificate (root key
    needed), and issue with it from now on. The previous generation keeps signing its CRL and OCSP
    answers until its last certificate expires. Running 'device-ca serve' nodes follow within
    seconds, without a restart."""
    svc = services(ctx)
    record = svc.rollover.rollover(key_type, _actor())
    svc.admin.export_ca_files()
    cert = x509.load_der_x509_certificate(record.der)
    click.echo(f"new issuing CA {record.name}: {cert.subject.rfc4514_string()} (serial {record.serial}, key "
               f"pkcs11:token={svc.settings.hsm_token};object={record.key_label}, {record.key_type}, notAfter "
               f"{_iso(cert.not_valid_after_utc)})")
    click.echo("running 'device-ca serve' nodes issue with the new CA, serve it in cacerts and trust its "
               "client certificates within 5 s, no restart needed; restart Keycloak with ca/trust.pem as its "
               "trust store", err=True)


@ca.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ca_list(ctx, as_json) -> None:
    """Issuing CA generations: state (current, previous, retired, revoked), notAfter and counts of
    the certificates each issued."""
    svc = services(ctx)
    records = svc.store.ca_certificates()
    if not records:
        raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
    counts = svc.store.issuer_counts(svc.clock.now())
    rows = []
    for g in reversed(generations(records)):
        c = counts.get(g.name, {})
        rows.append({"name": g.name, "generation": g.generation, "state": g.state,
                     "subject": g.certificate.subject.rfc4514_string(), "serial": g.record.serial,
                     "not_after": _iso(g.certificate.not_valid_after_utc), "key_type": g.record.key_type,
                     "key_label": g.record.key_label, "good": c.get("good", 0), "revoked": c.get("revoked", 0),
                     "expired": c.get("expired", 0), "last_certificate_expires": _iso(c.get("last_not_after"))})
    if as_json:
        _emit_json(rows)
        return
    click.echo(f"{'NAME':<12} {'GEN':>3} {'STATE':<9} {'NOT AFTER':<20} {'GOOD':>6} {'REVOKED':>7} {'EXPIRED':>7}  "
               "LAST CERT EXPIRES")
    for r in rows:
        click.echo(f"{r['name']:<12} {r['generation']:>3} {r['state']:<9} {r['not_after']:<20} {r['good']:>6} "
                   f"{r['revoked']:>7} {r['expired']:>7}  {r['last_certificate_expires'] or '-'}")


@ca.command("chain")
@click.pass_context
def ca_chain(ctx) -> None:
    """The chain as PEM: the issuing CA that issues first, then the root."""
    svc = services(ctx)
    certs = svc.ca_certificates()
    if not certs:
        raise DeviceCAError(Kind.NOT_FOUND, "no CA yet: run 'device-ca init' first")
    issuing = certs[current(svc.store.ca_certificates()).name]
    click.echo((issuing.public_bytes(Encoding.PEM) + certs[ROOT].public_bytes(Encoding.PEM)).decode(), nl=False)


# -- certificates ---------------------------------------------------------------------------

@cli.command()
@click.option("--policy", "policy_name", required=True, help="Device class (policies/<name>.toml).")
@click.option("--csr", "csr_file", required=True, type=click.File("rb"), help="PKCS#10 file, PEM or DER ('-' for stdin).")
@click.option("--device-id", help="Device id; default: read from the CSR subject as the policy's template says.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the PEM here instead of stdout.")
@click.option("--allow-policy", "allow_policies", multiple=True, metavar="POLICY",
              help="Station certificates: a device policy the station may issue on the batch API (repeatable).")
@click.option("--allow-devices", metavar="REGEX",
              help="Station certificates: only device ids this regular expression matches whole.")
@click.option("--role", type=click.Choice(ROLES),
              help="Operator certificates (policy admin): what the operator may do on the REST API.")
@click.pass_context
def issue(ctx, policy_name, csr_file, device_id, out, allow_policies, allow_devices, role) -> None:
    """Issue one device certificate from a CSR (a station certificate with its scope, an operator's
    with its role)."""
    issued = services(ctx).ra.issue(policy_name, csr_file.read(), device_id=device_id, actor=_actor(),
                                    allow_policies=allow_policies, allow_devices=allow_devices, role=role)
    if out:
        files.write_atomically(out, issued.pem, files.PUBLIC)
    else:
        click.echo(issued.pem.decode(), nl=False)
    click.echo(f"issued serial {issued.record.serial} to {issued.record.device_id} "
               f"until {_iso(issued.record.not_after)}", err=True)


def _expiry_marks(svc: Services):
    """record -> ``expired``, ``renewal-window`` or None (ra/expiry.py), at one instant for a listing."""
    from device_ca.ra.expiry import expiry_mark

    now = svc.clock.now()
    known = {p.name: p for p in svc.policies}
    return lambda r: expiry_mark(r, known.get(r.policy), now)


@cli.command("list")
@click.option("--status", type=click.Choice(["good", "revoked"]))
@click.option("--policy", "policy_name")
@click.option("--device-id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx, status, policy_name, device_id, as_json) -> None:
    """List issued certificates; EXPIRY marks those inside their renewal window or expired."""
    svc = services(ctx)
    records = svc.store.certificates(status=status, policy=policy_name, device_id=device_id)
    mark = _expiry_marks(svc)
    if as_json:
        _emit_json([{**reports.certificate(r), "expiry": mark(r)} for r in records])
        return
    click.echo(f"{'SERIAL':<36}  {'DEVICE':<20} {'POLICY':<14} {'STATUS':<8} {'NOT AFTER':<20} EXPIRY")
    for r in records:
        click.echo(f"{r.serial:<36}  {r.device_id:<20} {r.policy:<14} {r.status:<8} {_iso(r.not_after):<20} "
                   f"{mark(r) or ''}".rstrip())


@cli.command()
@click.argument("serial")
@click.option("--json", "as_json", is_flag=True)
@click.option("--pem", is_flag=True, help="Print the certificate as PEM.")
@click.pass_context
def show(ctx, serial, as_json, pem) -> None:
    """Show one certificate by its hex serial."""
    svc = services(ctx)
    store = svc.store
    record = find_certificate(store, serial)
    shown = {**reports.certificate_detail(store, record), "expiry": _expiry_marks(svc)(record)}
    if pem:
        click.echo(x509.load_der_x509_certificate(record.der).public_bytes(Encoding.PEM).decode(), nl=False)
    elif as_json:
        _emit_json(shown)
    else:
        scope = shown.get("scope")
        if scope is not None:
            shown["scope"] = f"policies {', '.join(scope['policies'])}; devices {scope['devices'] or 'any'}"
        for key, value in shown.items():
            if value is not None:
                click.echo(f"{key:<18} {value}")


@cli.command()
@click.argument("serial")
@click.option("--reason", type=click.Choice(list(REASONS)), default="unspecified", show_default=True)
@click.pass_context
def revoke(ctx, serial, reason) -> None:
    """Revoke a certificate (RFC 5280 reason names)."""
    record = services(ctx).ra.revoke(serial, reason, actor=_actor())
    click.echo(f"revoked {record.serial} ({record.device_id}) reason {reason} at {_iso(record.revoked_at)}")


@cli.command()
@click.option("--older-than", "older_than", type=click.IntRange(min=0), default=300, show_default=True,
              help="Seconds a reservation must be old to be listed (younger ones may still be signing).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def reconcile(ctx, older_than, as_json) -> None:
    """List serials reserved for signing whose certificate was never recorded (crash or failed write).

    Such a serial is never reused and never reported as good; the certificate, if it was
    signed at all, never reached anyone through device-ca.
    """
    pending = services(ctx).ra.reconcile(dt.timedelta(seconds=older_than))
    if as_json:
        _emit_json([{"serial": r.serial, "device_id": r.device_id, "policy": r.policy,
                     "reserved_at": _iso(r.reserved_at), "tbs_sha256": r.tbs_sha256} for r in pending])
        return
    if not pending:
        click.echo("no unfinished reservations")
    for r in pending:
        click.echo(f"{r.serial}  {r.device_id:<20} {r.policy:<14} reserved {_iso(r.reserved_at)}  no certificate recorded")


# -- policies and audit -----------------------------------------------------------------------

@cli.group()
def policy() -> None:
    """Device-class policies."""


@policy.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def policy_list(ctx, as_json) -> None:
    """The policies in the policy directory."""
    items = [reports.policy(p) for p in services(ctx).policies]
    if as_json:
        _emit_json(items)
        return
    click.echo(f"{'POLICY':<16} {'KEY TYPES':<22} {'VALIDITY':<9} {'ENROLLMENT':<32} KEYCLOAK")
    for p in items:
        kc = p["keycloak"]
        kc_text = f"{kc['realm']} ({kc['access_token_lifespan_s'] // 60} min tokens)" if kc else "-"
        click.echo(f"{p['name']:<16} {','.join(p['key_types']):<22} {str(p['validity_days']) + 'd':<9} "
                   f"{','.join(p['enrollment']):<32} {kc_text}")


@policy.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def policy_check(file) -> None:
    """Load a policy file and report whether device-ca accepts it."""
    p = load_policy(file)
    click.echo(f"{file}: OK (policy {p.name}: {', '.join(p.key_types)}, {p.validity.days} days, "
               f"subject {p.subject})")


@cli.group()
def keys() -> None:
    """Keys device-ca refuses to certify."""


@keys.command("blocked")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_blocked(ctx, as_json) -> None:
    """Keys revoked for keyCompromise (SHA-256 of the SubjectPublicKeyInfo): every request carrying
    one is refused, on every path."""
    rows = [{"spki_sha256": digest, "revoked_serial": serial, "blocked_at": _iso(at), "actor": actor}
            for digest, serial, at, actor in services(ctx).store.blocked_keys()]
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        click.echo("no blocked keys")
    for r in rows:
        click.echo(f"{r['spki_sha256']}  revoked with {r['revoked_serial']} at {r['blocked_at']} by {r['actor']}")


@cli.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@click.option("--expect-head", metavar="SEQ:HASH", help="A head printed by an earlier verify and kept elsewhere: "
              "exit 12 unless the log still holds that event with that hash.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit_verify(ctx, expect_head, as_json) -> None:
    """Check every event's hash and link, every signed checkpoint against the chain and the token's
    audit key, and the certificates table against the chain; exit 12 if anything was edited,
    deleted or reordered. Prints the head as SEQ:HASH: keep it elsewhere and give it to
    --expect-head later, so that a rollback or a rewrite of the newest events is caught too."""
    expected = None
    if expect_head:
        seq, sep, digest = expect_head.partition(":")
        if not (sep and seq.isdigit() and len(digest) == 64):
            raise DeviceCAError(Kind.MALFORMED, "--expect-head is SEQ:HASH as 'audit verify' prints it")
        expected = (int(seq), digest.lower())
    svc = services(ctx)
    report = reports.verify_audit(svc.store, svc.checkpoints, expected)
    if as_json:
        _emit_json(report)
    elif report["ok"]:
        click.echo(f"audit log OK: {report['events']} events, {report['checkpoints']} signed checkpoints, "
                   f"head {report['head']}")
    else:
        for problem in report["problems"]:
            click.echo(f"audit: {problem}", err=True)
        click.echo(f"device-ca: audit log is NOT intact ({len(report['problems'])} problems in {report['events']} "
                   "events)", err=True)
    if not report["ok"]:
        ctx.exit(AUDIT_BROKEN)


@audit.command("export")
@click.option("--since", type=click.IntRange(min=0), default=0, show_default=True, metavar="SEQ",
              help="Only the events after SEQ (the last one the receiver already has).")
@click.option("--format", "form", type=click.Choice(["jsonl", "cef"]), default="jsonl", show_default=True,
              help="jsonl: one JSON object per event, with seq, prev_hash and hash (docs/audit-export.md); "
                   "cef: one ArcSight CEF line per event.")
@click.pass_context
def audit_export(ctx, since, form) -> None:
    """Write the audit events in sequence order to stdout, streamed (a page of events at a time)."""
    from device_ca.siem.formats import render

    feed = services(ctx).store.audit_feed
    while events := feed.events(since, 1000):
        click.echo("\n".join(render(e, form) for e in events))
        since = events[-1].seq


@audit.command("webhook")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit_webhook(ctx, as_json) -> None:
    """How far the SIEM webhook has delivered: the last event the receiver confirmed, how many wait,
    and the failures since."""
    svc = services(ctx)
    from device_ca.siem.webhook import CURSOR

    cursor, head = svc.store.audit_feed.cursor(CURSOR), svc.store.audit_feed.head_seq()
    url = svc.settings.audit_webhook.url.split("?")[0] if svc.settings.audit_webhook else None
    shown = {"url": url,
             "delivered_seq": cursor.seq, "head_seq": head, "waiting": head - cursor.seq,
             "delivered_at": _iso(cursor.delivered_at), "failures": cursor.failures, "last_error": cursor.last_error,
             "last_attempt_at": _iso(cursor.last_attempt_at)}
    if as_json:
        _emit_json(shown)
        return
    for key, value in shown.items():
        if value is not None:
            click.echo(f"{key:<16} {value}")


@audit.command("checkpoint")
@click.pass_context
def audit_checkpoint(ctx) -> None:
    """Sign a checkpoint of the current head with the token's audit key now (the server signs one
    every 30 s in which events were added and after every CRL) and print it as JSON, as served at
    /audit/checkpoint."""
    checkpoints = services(ctx).checkpoints
    signed = checkpoints.sign(force=True)
    if signed is None:
        raise DeviceCAError(Kind.NOT_FOUND, "the audit log is empty: nothing to sign")
    _emit_json(checkpoints.as_json(signed))


# noqa below: these register on the group defined above, so they come after it.
from device_ca.cli import (backup_cmds, bulk_cmds, enroll_cmds, expiry_cmds, hsm_cmds,  # noqa: E402
                           keycloak_cmds, status_cmds)

enroll_cmds.register(cli, services, _actor, _iso)
status_cmds.register(cli, services, _actor, _iso)
keycloak_cmds.register(cli, services, _actor, _iso)
bulk_cmds.register(cli, services, _actor, _iso)
backup_cmds.register(cli, services, _actor, _iso)
expiry_cmds.register(cli, services, _actor, _iso)
hsm_cmds.register(cli, services, _actor, _iso)


def main() -> None:
    cli(prog_name="device-ca")


if __name__ == "__main__":
    main()
