"""``shipway keys|audit|stop|resume|retention``: credentials, the audit trail, the stop switch
and retention. Every command that changes state checks the caller's role (see cli/access.py)
and writes an audit event."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from shipway.cli.access import cli_principal
from shipway.cli.lifecycle import ManifestArg, _opened, err, out, when
from shipway.govern.roles import ADMIN, APPROVE, OPERATE, READ, ROLE_HELP
from shipway.settings import Settings

keys_app = typer.Typer(
    help="API keys: create (shown once), list, rotate, revoke.", no_args_is_help=True
)
audit_app = typer.Typer(
    help="The hash-chained audit log: list, verify, checkpoint.", no_args_is_help=True
)
retention_app = typer.Typer(
    help="Remove records past the manifest's retention.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(audit_app, name="audit")
    app.add_typer(retention_app, name="retention")
    app.command("stop")(stop)
    app.command("resume")(resume)


# -- keys --------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key.")],
    role: Annotated[
        str, typer.Option("--role", help="; ".join(f"{r}: {h}" for r, h in ROLE_HELP.items()))
    ],
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime such as 90d or 12h (default: none).")
    ] = None,
    manifest: ManifestArg = Path("shipway.yaml"),
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "",
) -> None:
    """Create an API key and print it ONCE; only its hash is stored."""
    from shipway.manifest import parse_duration

    with _opened(manifest) as parts:
        actor = cli_principal(parts.store, Settings(), ADMIN, "keys create").actor
        life = parse_duration(expires) if expires else None
        info, secret = parts.keys.create(
            name=name, role=role, actor=actor, expires_in=life, reason=reason
        )
    err.print(
        f"Created key [bold]{info.id}[/] for {name!r} with role {role}"
        + (f", expires {when(info.expires_at)}" if info.expires_at else "")
        + ". It is shown once; store it now:",
        highlight=False,
    )
    print(secret)


@keys_app.command("list")
def keys_list(
    manifest: ManifestArg = Path("shipway.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """API keys without their secrets."""
    with _opened(manifest) as parts:
        keys = parts.keys.list()
    if as_json:
        print(orjson.dumps([k.to_dict() for k in keys]).decode())
        return
    t = Table(title="API keys")
    for col in ("id", "name", "role", "created", "by", "expires", "state"):
        t.add_column(col)
    for k in keys:
        state = "revoked" if k.revoked_at else ("active" if k.active else "expired")
        t.add_row(k.id, k.name, k.role, when(k.created_at), k.created_by, when(k.expires_at), state)
    out.print(t)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see keys list).")],
    manifest: ManifestArg = Path("shipway.yaml"),
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "",
) -> None:
    """Revoke a key: running servers refuse it within a quarter of a second."""
    with _opened(manifest) as parts:
        actor = cli_principal(parts.store, Settings(), ADMIN, "keys revoke").actor
        parts.keys.revoke(key_id, actor=actor, reason=reason)
    out.print(f"Revoked key {key_id}")


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id (see keys list).")],
    manifest: ManifestArg = Path("shipway.yaml"),
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "",
) -> None:
    """Replace a key with a new one (same name, role, lifetime); the old one is revoked."""
    with _opened(manifest) as parts:
        actor = cli_principal(parts.store, Settings(), ADMIN, "keys rotate").actor
        info, secret = parts.keys.rotate(key_id, actor=actor, reason=reason)
    err.print(f"Key {key_id} revoked; new key [bold]{info.id}[/], shown once:")
    print(secret)


# -- audit -------------------------------------------------------------------------------------


@audit_app.command("list")
def audit_list(
    manifest: ManifestArg = Path("shipway.yaml"),
    limit: Annotated[int, typer.Option(help="Newest events to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """The newest audit events: who did what, to what, when and why."""
    from shipway.govern import audit

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ, "audit list", reads_only=True)
        events = list(reversed(audit.events(parts.store.engine, limit=limit, newest_first=True)))
    if as_json:
        for e in events:
            print(orjson.dumps(e).decode())
        return
    t = Table(title="audit log")
    for col in ("seq", "time (UTC)", "actor", "action", "target", "reason"):
        t.add_column(col)
    for e in events:
        t.add_row(
            str(e["seq"]), when(e["ts"], ""), e["actor"], e["action"], e["target"], e["reason"]
        )
    out.print(t)


@audit_app.command("verify")
def audit_verify(manifest: ManifestArg = Path("shipway.yaml")) -> None:
    """Check the whole hash chain, and hold the newest signed checkpoint (audit.checkpoint_dir)
    against it; exit 1 naming the first problem. Checking the checkpoint needs the server
    secret (SHIPWAY_SECRET_KEY or SHIPWAY_SECRET_KEY_FILE)."""
    from shipway.errors import ConfigError

    try:
        key: bytes | None = Settings().secret()
    except ConfigError:
        key = None
    with _opened(manifest) as parts:
        res = parts.verify_audit(key)
    cp = res["checkpoint"]
    note = (
        f"; checkpoint {cp['file']} (event {cp['seq']}) holds"
        if cp.get("checked") and cp.get("ok")
        else f"; checkpoint not checked: {cp.get('why')}"
        if not cp.get("checked")
        else ""
    )
    if res["ok"]:
        out.print(f"[green]audit chain intact[/]: {res['checked']} events{note}", highlight=False)
        return
    where = f" at event {res['broken_seq']}" if res.get("broken_seq") is not None else ""
    err.print(f"[bold red]audit chain broken{where}[/]: {res['problem']}", highlight=False)
    raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint(
    manifest: ManifestArg = Path("shipway.yaml"),
    check: Annotated[
        Path | None, typer.Option("--check", help="Verify a saved checkpoint file instead.")
    ] = None,
) -> None:
    """Print a checkpoint of the chain's head signed with the server secret (HMAC-SHA256), to
    keep off-site; with --check, verify one against the store."""
    from shipway.govern import audit

    settings = Settings()
    with _opened(manifest) as parts:
        engine = parts.store.engine
        cli_principal(parts.store, settings, READ, "audit checkpoint")
        key = settings.secret()
        if check is None:
            print(json.dumps(audit.checkpoint(engine, key)))
            return
        cp = json.loads(check.read_text())
        res = audit.check_checkpoint(engine, key, cp)
        if res.ok:
            out.print(f"[green]checkpoint valid[/]: event {cp['seq']} is in the chain unchanged")
            return
    err.print(f"[bold red]checkpoint does not match[/]: {res.problem}", highlight=False)
    raise typer.Exit(1)


# -- stop switch and retention ------------------------------------------------------------------


def stop(
    reason: Annotated[str, typer.Option("--reason", help="Why (required; audited).")],
    manifest: ManifestArg = Path("shipway.yaml"),
) -> None:
    """Stop calling models at once: every request gets the manifest's safe behaviour."""
    with _opened(manifest) as parts:
        actor = cli_principal(parts.store, Settings(), APPROVE, "stop").actor
        parts.rollout.stop(actor=actor, reason=reason)
    out.print(
        f"[bold red]Stopped[/] {parts.name}: running servers stop calling models "
        "within a second. Undo with 'shipway resume'."
    )


def resume(
    manifest: ManifestArg = Path("shipway.yaml"),
    reason: Annotated[str, typer.Option("--reason", help="Why (audited).")] = "",
) -> None:
    """Undo 'shipway stop': models answer again."""
    with _opened(manifest) as parts:
        actor = cli_principal(parts.store, Settings(), APPROVE, "resume").actor
        parts.rollout.resume(actor=actor, reason=reason)
    out.print(f"[green]Resumed[/] {parts.name}")


@retention_app.command("purge")
def retention_purge(manifest: ManifestArg = Path("shipway.yaml")) -> None:
    """Delete decisions older than the manifest's retention now (serve also does it hourly)."""
    with _opened(manifest) as parts:
        actor = cli_principal(parts.store, Settings(), OPERATE, "retention purge").actor
        res = parts.purge(actor)
    if not res["older_than"]:
        out.print("No retention is set in the manifest (retention.decisions); nothing removed.")
        return
    for name, n in res["removed"].items():
        out.print(f"removed {n} rows from {name} older than {when(res['older_than'][name])}")
