"""CLI: the CA's PKCS#11 token as device-ca sees it (``device-ca hsm info``)."""
from __future__ import annotations

import json

import click


def register(cli: click.Group, services, actor, iso) -> None:
    @cli.group()
    def hsm() -> None:
        """The CA's PKCS#11 token (DEVICE_CA_HSM_MODULE, DEVICE_CA_HSM_TOKEN)."""

    @hsm.command("info")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
    @click.pass_context
    def hsm_info(ctx, as_json) -> None:
        """The module and token, the mechanism each signature device-ca makes goes through (chosen
        from the token's mechanism list at start), the key types it can make, and every key object
        with its protection attributes. Nothing secret is read or printed. Exit 9 when the token
        cannot be used."""
        described = services(ctx).token.describe()
        if as_json:
            click.echo(json.dumps(described, indent=2))
            return
        token = described["token"]
        click.echo(f"module     {token['module']}")
        click.echo(f"library    {token['library']} (PKCS#11 {token['cryptoki']})")
        click.echo(f"token      {token['label']!r} in slot {token['slot']}: {token['manufacturer']} {token['model']}")
        sessions = token["max_sessions"] if token["max_sessions"] is not None else "no limit reported"
        click.echo(f"limits     PIN {token['pin_length'][0]}-{token['pin_length'][1]} characters, "
                   f"sessions: {sessions}")
        click.echo("mechanisms device-ca uses:")
        for name, plan in described["plans"].items():
            click.echo(f"  {name:<26} {plan}")
        click.echo(f"key objects ({len(described['objects'])}):")
        for obj in described["objects"]:
            flags = [name for name in ("sensitive", "always_sensitive", "never_extractable", "local", "sign")
                     if obj.get(name)]
            if obj.get("decrypt"):
                flags.append("decrypt")  # tpm2-pkcs11: every TPM key object can also decrypt
            if obj.get("extractable"):
                flags.append("EXTRACTABLE")
            click.echo(f"  {obj['label']:<34} {obj['class']:<11} {obj['key_type']:<4} id {obj['id'][:16]}"
                       + (f"  {' '.join(flags)}" if flags else ""))
