"""CLI: the EST server, bootstrap tokens, pending approvals, rotation housekeeping."""
from __future__ import annotations

import json
from pathlib import Path

import click

from device_ca.errors import DeviceCAError, Kind
from device_ca.policy import parse_duration
from device_ca.ra import reports


def _addresses(values) -> tuple[str, ...]:
    """IP addresses as the front compares them (normalised); a name or a malformed one is refused."""
    import ipaddress

    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_address(value)))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an IP address", param_hint="--load-balancer") from None
    return tuple(out)


def register(cli: click.Group, services, actor, iso) -> None:
    @cli.command()
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address of both listeners.")
    @click.option("--port", default=8443, show_default=True, help="HTTPS port (EST).")
    @click.option("--http-port", default=8080, show_default=True, help="Plain HTTP port (OCSP, CRL, CA files).")
    @click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--workers", type=click.IntRange(1, 256), help="HTTPS worker processes (default: one per core, "
                  "at least 2).")
    @click.option("--threads", type=click.IntRange(1, 256), help="Threads per HTTPS worker (default: 8) that "
                  "answer complete requests; a worker's threads share their issuing transactions.")
    @click.option("--http-workers", default=2, show_default=True, help="Plain-HTTP worker processes (OCSP, CRL).")
    @click.option("--rate-limit", default=20.0, show_default=True, help="EST requests/s per client address (0: off).")
    @click.option("--max-batches", default=2, show_default=True, type=click.IntRange(1, 64),
                  help="Batch API batches issued at once on this node; the others wait, state 'queued'.")
    @click.option("--ocsp-nonce-rate", default=50.0, show_default=True, type=click.FloatRange(min=0),
                  help="OCSP answers signed live for a nonce, per client address per second (burst 2x; 0: "
                  "no limit); beyond it the answer comes without the nonce.")
    @click.option("--request-timeout", default=5.0, show_default=True, type=click.FloatRange(min=0.5),
                  help="Seconds a client has to send a whole request, headers and body (408 or closed after).")
    @click.option("--trusted-proxy", multiple=True, help="Address allowed to pass the client certificate in a header.")
    @click.option("--client-cert-header", help="Header carrying the proxy-verified client certificate (URL-encoded PEM).")
    @click.option("--default-policy", help="Policy for EST paths without a label.")
    @click.option("--handshake-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
                  help="Seconds a client has to finish its TLS handshake (HTTPS).")
    @click.option("--idle-timeout", default=15.0, show_default=True, type=click.FloatRange(min=0.1),
                  help="Seconds a keep-alive connection may stay silent between requests (both listeners).")
    @click.option("--load-balancer", "load_balancers", multiple=True, metavar="ADDRESS",
                  help="Address of a load balancer in front (repeatable). On HTTPS its connections start with a "
                       "PROXY protocol v1 header naming the device (nginx stream: proxy_protocol on); on HTTP its "
                       "X-Forwarded-For names the client. Rate limits and logs then see the device, not the balancer.")
    @click.option("--rate-limit-scope", type=click.Choice(["cluster", "node"]), default="cluster", show_default=True,
                  help="cluster: one bucket per client for every node sharing the database (PostgreSQL; SQLite is "
                       "one host, where both mean the node); node: buckets of this node only.")
    def serve(host, port, http_port, tls_cert, tls_key, workers, threads, http_workers, rate_limit, max_batches,
              ocsp_nonce_rate, request_timeout, trusted_proxy, client_cert_header, default_policy, handshake_timeout,
              idle_timeout, load_balancers, rate_limit_scope) -> None:
        """Serve EST and the batch API over HTTPS, and OCSP, CRLs, CA files, health and metrics over HTTP."""
        from device_ca.web.server import DEFAULT_THREADS, DEFAULT_WORKERS, ServeOptions, run

        run(ServeOptions(host=host, port=port, http_port=http_port, tls_cert=tls_cert, tls_key=tls_key,
                         workers=workers or DEFAULT_WORKERS, threads=threads or DEFAULT_THREADS, http_workers=http_workers, rate_limit=rate_limit,
                         max_batches=max_batches, ocsp_nonce_rate=ocsp_nonce_rate,
                         request_timeout=request_timeout,
                         trusted_proxies=tuple(trusted_proxy), client_cert_header=client_cert_header,
                         default_policy=default_policy, handshake_timeout=handshake_timeout,
                         idle_timeout=idle_timeout, rate_limit_scope=rate_limit_scope,
                         load_balancers=_addresses(load_balancers)))

    @cli.group()
    def tls() -> None:
        """TLS material of the server."""

    @tls.command("server-cert")
    @click.option("--host", "hosts", multiple=True, required=True, help="Name or address (repeatable).")
    @click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
    @click.pass_context
    def tls_server_cert(ctx, hosts, out_dir) -> None:
        """Issue the HTTPS server certificate (server.pem with chain, server.key) from the CA."""
        hosts = list(hosts)
        cert = services(ctx).admin.issue_server_certificate(hosts, out_dir, actor())
        click.echo(f"server certificate {format(cert.serial_number, 'x')} for {', '.join(hosts)} in {out_dir}")

    @cli.group()
    def token() -> None:
        """One-time bootstrap credentials for EST enrollment."""

    @token.command("create")
    @click.option("--policy", "policy_name", required=True)
    @click.option("--device-id", required=True)
    @click.option("--ttl", default="24h", show_default=True, help="Lifetime, e.g. 30m, 24h, 7d (at most 30d).")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def token_create(ctx, policy_name, device_id, ttl, as_json) -> None:
        """Print a one-time secret; the device enrolls with HTTP Basic DEVICE_ID:SECRET. It is shown only once."""
        try:
            lifetime = parse_duration(ttl)
        except ValueError as exc:
            raise DeviceCAError(Kind.MALFORMED, str(exc)) from None
        token = services(ctx).est.create_token(policy_name, device_id, lifetime, actor())
        if as_json:
            click.echo(json.dumps({"id": token.id, "device_id": device_id, "policy": policy_name,
                                   "expires_at": iso(token.expires_at), "secret": token.secret}))
        else:
            click.echo(token.secret)
            click.echo(f"token {token.id} for {device_id} (policy {policy_name}) until {iso(token.expires_at)}",
                       err=True)

    @token.command("list")
    @click.option("--policy", "policy_name")
    @click.option("--device-id")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def token_list(ctx, policy_name, device_id, as_json) -> None:
        """Bootstrap tokens and their state (open, used, expired, withdrawn); never their secrets,
        which are not kept (only their SHA-256)."""
        svc = services(ctx)
        now = svc.clock.now()
        rows = [reports.token(t, now) for t in svc.store.enrollment.tokens(device_id=device_id, policy=policy_name)]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        click.echo(f"{'ID':<17} {'DEVICE':<20} {'POLICY':<14} {'STATE':<9} {'CREATED':<20} {'EXPIRES':<20} DETAIL")
        for r in rows:
            detail = {"used": f"certificate {r['serial']}", "withdrawn": f"by {r['withdrawn_by']} at {r['withdrawn_at']}"}
            click.echo(f"{r['id']:<17} {r['device_id']:<20} {r['policy']:<14} {r['state']:<9} {r['created_at']:<20} "
                       f"{r['expires_at']:<20} {detail.get(r['state'], '')}".rstrip())

    @token.command("revoke")
    @click.argument("token_id")
    @click.pass_context
    def token_revoke(ctx, token_id) -> None:
        """Withdraw an unused token: its device can no longer enroll with it (401, as for a wrong one)."""
        t = services(ctx).est.withdraw_token(token_id, actor())
        click.echo(f"withdrew token {t.id} ({t.device_id}, policy {t.policy}) at {iso(t.withdrawn_at)}")

    @cli.group()
    def pending() -> None:
        """Enrollment requests waiting for approval."""

    @pending.command("list")
    @click.option("--all", "show_all", is_flag=True, help="Also decided requests.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def pending_list(ctx, show_all, as_json) -> None:
        items = services(ctx).store.enrollment.pending(None if show_all else "pending")
        rows = [reports.pending(r) for r in items]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        click.echo(f"{'ID':<14} {'POLICY':<14} {'DEVICE':<20} {'METHOD':<16} {'STATE':<9} CREATED")
        for r in rows:
            click.echo(f"{r['id']:<14} {r['policy']:<14} {r['device_id']:<20} {r['method']:<16} {r['state']:<9} "
                       f"{r['created_at']}")

    def _decide(ctx, request_id: str, approve: bool) -> None:
        r = services(ctx).ra.decide_pending(request_id, approve, actor=actor())
        click.echo(f"{r.state} {r.id} ({r.device_id}, policy {r.policy})")

    @pending.command("approve")
    @click.argument("request_id")
    @click.pass_context
    def pending_approve(ctx, request_id) -> None:
        """Approve; the device's next identical request gets its certificate."""
        _decide(ctx, request_id, True)

    @pending.command("reject")
    @click.argument("request_id")
    @click.pass_context
    def pending_reject(ctx, request_id) -> None:
        """Reject; the device's next request is refused (403)."""
        _decide(ctx, request_id, False)

    @cli.command("revoke-superseded")
    @click.pass_context
    def revoke_superseded(ctx) -> None:
        """Revoke renewed certificates whose rotation grace is over (the server also does this every 30 s)."""
        done = services(ctx).ra.revoke_superseded()
        click.echo(f"revoked {len(done)} superseded certificates" + (": " + ", ".join(done) if done else ""))
