"""CLI: bulk issuance for a manufacturing line (`device-ca bulk issue`, `device-ca bulk list`)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from device_ca.errors import DeviceCAError, Kind


def register(cli: click.Group, services, actor, iso) -> None:
    @cli.group()
    def bulk() -> None:
        """Batches of certificates for a production line: resumable, one certificate per device."""

    @bulk.command("issue")
    @click.option("--policy", required=True, help="Device-class policy of every item.")
    @click.option("--csr-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                  help="One CSR per file (PEM or DER); the device id is the file name without extension.")
    @click.option("--id-from", type=click.Choice(["filename", "subject"]), default="filename", show_default=True,
                  help="With --csr-dir: take the device id from the file name or from the CSR subject.")
    @click.option("--jsonl", type=click.File("r"), help='One {"device_id": ..., "csr": base64} per line ("-": stdin).')
    @click.option("--generate-keys", "generate_keys", type=click.File("r"),
                  help="One device id per line: the CA generates each key and writes <id>.p12.")
    @click.option("--secret-file", type=click.File("r"),
                  help="The batch secret of a key-generating batch being resumed (first line).")
    @click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                  help="Directory for <device>.pem (or .p12) files and manifest.csv.")
    @click.option("--batch-id", help="Idempotency key; default: derived from the policy and the input.")
    @click.option("--replace", is_flag=True, help="Devices that hold a current certificate of the policy get a new "
                  "one that supersedes it (revoked 'superseded' after the policy's rotation grace); without it such "
                  "items fail.")
    @click.option("--workers", type=click.IntRange(1, 64), help="Signing processes (default: one per core).")
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @click.pass_context
    def bulk_issue(ctx, policy, csr_dir, id_from, jsonl, generate_keys, secret_file, out_dir, batch_id, replace,
                   workers, as_json) -> None:
        """Issue a whole batch. Rerunning the same command, also after a crash or kill -9, issues only
        what is missing: never a second certificate for a device in the same batch."""
        from device_ca.ra.bulk import csr_dir_source, file_source, iter_device_ids, iter_jsonl

        sources = [s for s in (csr_dir, jsonl, generate_keys) if s is not None]
        if len(sources) != 1:
            raise DeviceCAError(Kind.MALFORMED, "give exactly one of --csr-dir, --jsonl, --generate-keys")
        svc = services(ctx)
        if csr_dir is not None:
            inputs = csr_dir_source(csr_dir, svc.policies.get(policy), id_from)
        elif jsonl is not None:
            inputs = file_source(jsonl, iter_jsonl)
        else:
            inputs = file_source(generate_keys, iter_device_ids)
        secret = secret_file.readline().strip() if secret_file else None
        run = svc.bulk(policy, inputs, out_dir, actor=actor(), batch_id=batch_id, keygen=generate_keys is not None,
                       replace=replace, secret=secret, workers=workers,
                       progress=_Progress() if not as_json else None)
        summary = run.run()
        if summary.secret:
            # shown once, on the terminal only: it is stored nowhere, in clear or otherwise recoverable
            click.echo(f"batch secret (opens every .p12 of this batch; keep it, it is not stored): {summary.secret}",
                       err=True)
        result = {"batch": summary.batch_id, "new_batch": summary.created, "issued": summary.issued,
                  "already_issued": summary.already, "failed": summary.failed, "items": summary.total,
                  "seconds": round(summary.seconds, 2), "rate_per_s": round(summary.rate, 1),
                  "manifest": str(summary.manifest)}
        if as_json:
            import json
            click.echo(json.dumps(result, indent=2))
        else:
            click.echo(f"batch {summary.batch_id}: {summary.issued} issued now, {summary.already} earlier, "
                       f"{summary.failed} failed, of {summary.total} in {summary.seconds:.1f} s "
                       f"({summary.rate:,.0f}/s); manifest {summary.manifest}")
        if summary.failed:
            ctx.exit(4)                       # some items failed: their reasons are in the manifest

    @bulk.command("list")
    @click.pass_context
    def bulk_list(ctx) -> None:
        """Batches with their state and item counts."""
        store = services(ctx).store
        for batch in store.batches.batches():
            found = store.batches.counts(batch.id)
            counts = {s: found[s] for s in ("issued", "failed", "pending", "reserved")}
            click.echo(f"{batch.id}  {batch.policy}  {batch.state}  created {iso(batch.created_at)} by "
                       f"{batch.created_by}  " + "  ".join(f"{k} {v}" for k, v in counts.items()))


class _Progress:
    """`1,200/10,000  12%  1,530/s  ETA 6 s` on stderr, in place on a terminal, every 2 s otherwise."""

    def __init__(self):
        self.start = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and not self.tty and now - self.last < 2:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if rate else 0
        line = f"{done:,}/{total:,}  {100 * done // max(total, 1)}%  {rate:,.0f}/s  ETA {eta:,.0f} s"
        if self.tty:
            click.echo("\r" + line.ljust(60), nl=done >= total, err=True)
        else:
            click.echo(line, err=True)
