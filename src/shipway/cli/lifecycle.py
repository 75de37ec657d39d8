"""``shipway models ...`` and ``shipway rollout ...``: versions and the moves between them.

These commands change the stored rollout plan; a running server picks the change up within a
second (it polls the plan's generation), so no restart is needed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from shipway.cli.access import cli_principal
from shipway.errors import ShipwayError
from shipway.govern.roles import APPROVE, OPERATE
from shipway.settings import Settings

if TYPE_CHECKING:
    from shipway.parts import ServiceParts


def console(stderr: bool = False) -> Console:
    """A console for the CLI: the terminal's width, or 160 columns (or $COLUMNS) when the
    output is a pipe or a file, so tables are not folded at 80."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS") or 160)
    return Console(stderr=stderr, soft_wrap=True, width=width)


out = console()
err = console(stderr=True)

ManifestArg = Annotated[
    Path, typer.Option("--manifest", "-m", help="The service's manifest (or its folder).")
]
Reason = Annotated[str, typer.Option("--reason", help="Why (recorded in the rollout history).")]
Force = Annotated[
    bool,
    typer.Option(
        "--force", help="Pass a failed evaluation gate or failed step checks (needs --reason)."
    ),
]


def _sha(endpoint: Any) -> str:
    """A prompt's fingerprint, to tell versions' prompts apart (system and user messages)."""
    import hashlib

    text = f"{endpoint.system}\n---\n{endpoint.prompt}"
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def _opened(manifest: Path) -> Iterator[ServiceParts]:
    """The service's parts (no model loaded); a ShipwayError becomes a clear exit 1."""
    from shipway.parts import ServiceParts

    try:
        parts = ServiceParts.open(manifest, Settings())
    except ShipwayError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    try:
        yield parts
    except ShipwayError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        parts.close()


def when(ts: float | None, suffix: str = " UTC") -> str:
    """A Unix time as 'YYYY-MM-DD HH:MM:SS UTC' ('-' for none)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") + suffix


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _print_state(st: Any) -> None:
    parts = [f"champion v{st.champion}"]
    if st.canary is not None:
        key = f", sticky by {st.canary_key}" if st.canary_key else ""
        parts.append(f"canary v{st.canary} at {st.canary_percent:g}%{key}")
    if st.shadows:
        parts.append("shadows " + ", ".join(f"v{v}" for v in st.shadows))
    if st.previous_champion is not None:
        parts.append(f"previous champion v{st.previous_champion}")
    out.print("plan: " + "; ".join(parts) + f"  (generation {st.generation})")


def register(models_app: typer.Typer, rollout_app: typer.Typer) -> None:
    @models_app.command("add")
    def models_add(
        model: Annotated[
            str,
            typer.Option(
                "--model",
                help="joblib file, .onnx file, MLflow folder or models:/ URI, "
                "python:module:function, or an http(s):// URL of a JSON model server or an "
                "OpenAI-compatible chat endpoint.",
            ),
        ],
        manifest: ManifestArg = Path("shipway.yaml"),
        data: Annotated[
            Path | None,
            typer.Option(help="The data it was trained on (its digest is kept as lineage)."),
        ] = None,
        note: Annotated[str, typer.Option(help="A note kept with the version.")] = "",
        endpoint: Annotated[
            Path | None,
            typer.Option(
                "--endpoint",
                help="HTTP models: a YAML file with the endpoint settings (kind, model, prompt, "
                "answer, prices), registered with this version. Default: the champion's.",
            ),
        ] = None,
        prompt_file: Annotated[
            Path | None,
            typer.Option(
                "--prompt-file",
                help="HTTP chat models: a text file whose content replaces the prompt.",
            ),
        ] = None,
    ) -> None:
        """Register a new version: checked against the contract, scored beside the champion.

        For an HTTP model the prompt, model name, parameters and prices are part of the
        version, so a prompt change is shadowed, gated and rolled out like a new model."""
        from shipway.lifecycle.versions import add_version
        from shipway.models.endpoints import read_endpoint_file

        settings = Settings()
        with _opened(manifest) as parts:
            spec = read_endpoint_file(endpoint) if endpoint is not None else None
            if prompt_file is not None and not prompt_file.exists():
                raise ShipwayError(f"prompt file {prompt_file} does not exist")
            prompt = prompt_file.read_text(encoding="utf-8") if prompt_file is not None else None
            actor = cli_principal(parts.store, settings, OPERATE, "models add").actor
            with err.status("Scoring the new version and the champion on the holdout..."):
                res = add_version(
                    parts.store,
                    parts.manifest,
                    model=model,
                    data=data,
                    note=note,
                    actor=actor,
                    endpoint=spec,
                    prompt=prompt,
                )
            out.print(
                f"[green]Registered[/] version {res.version.version} "
                f"({res.version.flavor}, {res.version.uri})"
            )
            out.print(f"  holdout:  {_fmt_metrics(res.metrics)}")
            out.print(f"  champion v{res.champion_version}: {_fmt_metrics(res.champion_metrics)}")
            if res.gate.passed:
                out.print("  gate: [green]passed[/] (" + "; ".join(res.gate.checks) + ")")
            else:
                out.print("  gate: [red]failed[/]: " + "; ".join(res.gate.reasons))
                out.print("  It may shadow; canary or promotion needs --force and a reason.")
            for text in res.gate.notes:
                out.print(f"  note: {text}")

    @models_app.command("list")
    def models_list(
        manifest: ManifestArg = Path("shipway.yaml"),
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Registered versions with their roles, gate result and holdout metrics."""
        with _opened(manifest) as parts:
            st = parts.rollout.state()
            versions = parts.registry.list(parts.name)
            if as_json:
                rows = []
                for v in versions:
                    d = v.to_dict()
                    d.pop("reference", None)
                    ep = parts.registry.endpoint_of(v)
                    if ep is not None:
                        d["endpoint"] = {
                            **ep.model_dump(mode="json"),
                            # a header may hold a key: only environment references are shown
                            "headers": {
                                k: v if v.startswith("env:") else "(set)"
                                for k, v in ep.headers.items()
                            },
                            "prompt_sha256": _sha(ep),
                        }
                    rows.append(d)
                print(orjson.dumps({"state": st.to_dict(), "models": rows}).decode())
                return
            t = Table(title=f"models of {parts.name}")
            for col in ("version", "role", "flavor", "gate", "holdout", "added", "by", "note"):
                t.add_column(col)
            for v in versions:
                role = []
                if v.version == st.champion:
                    role.append("champion")
                if v.version == st.canary:
                    role.append(f"canary {st.canary_percent:g}%")
                if v.version in st.shadows:
                    role.append("shadow")
                gate = v.metrics.get("gate")
                gate_txt = "-" if not gate else ("passed" if gate["passed"] else "failed")
                ep = parts.registry.endpoint_of(v)
                flavor = v.flavor
                if ep is not None and ep.kind == "chat":
                    flavor += f" {ep.model}, prompt {_sha(ep)[:8]}"
                t.add_row(
                    str(v.version),
                    ", ".join(role),
                    flavor,
                    gate_txt,
                    _fmt_metrics(v.metrics.get("holdout", {})),
                    when(v.created_at),
                    v.created_by,
                    v.note,
                )
            out.print(t)

    def _move(
        manifest: Path, fn: Any, move: str, *, percent: float | None = None, force: bool = False
    ) -> Any:
        """Make a move as the CLI's principal: operate, or approve where the move needs it."""
        from shipway.lifecycle.rollout import approval_needed

        with _opened(manifest) as parts:
            why = approval_needed(parts.rollout, move, percent=percent, force=force)
            permission = APPROVE if why else OPERATE
            actor = cli_principal(parts.store, Settings(), permission, why or move).actor
            result = fn(parts.rollout, actor)
            st = result[0] if isinstance(result, tuple) else result
            _print_state(st)
            return result

    @rollout_app.command("shadow")
    def rollout_shadow(
        version: Annotated[int, typer.Argument(help="Version to mirror traffic to.")],
        manifest: ManifestArg = Path("shipway.yaml"),
        reason: Reason = "",
        stop: Annotated[bool, typer.Option("--stop", help="Stop shadowing it.")] = False,
    ) -> None:
        """Mirror live traffic to VERSION; its answers are logged, never returned."""
        if stop:
            _move(manifest, lambda r, a: r.unshadow(version, actor=a, reason=reason), "unshadow")
        else:
            _move(manifest, lambda r, a: r.shadow(version, actor=a, reason=reason), "shadow")

    @rollout_app.command("canary")
    def rollout_canary(
        version: Annotated[int, typer.Argument(help="Version to send a share of traffic to.")],
        percent: Annotated[
            float | None,
            typer.Option(help="Share in percent (default: the manifest's first step)."),
        ] = None,
        key: Annotated[
            str | None, typer.Option(help="Sticky key: an input field, or header:NAME.")
        ] = None,
        manifest: ManifestArg = Path("shipway.yaml"),
        reason: Reason = "",
        force: Force = False,
    ) -> None:
        """Send a share of requests to VERSION (the same key always gets the same version)."""
        _move(
            manifest,
            lambda r, a: r.canary(
                version, percent=percent, key=key, actor=a, reason=reason, force=force
            ),
            "canary",
            percent=percent,
            force=force,
        )

    @rollout_app.command("step")
    def rollout_step(
        manifest: ManifestArg = Path("shipway.yaml"),
        reason: Reason = "",
        force: Force = False,
    ) -> None:
        """Move the canary to the next step when this step's checks pass."""
        _st, rep = _move(
            manifest,
            lambda r, a: r.step(actor=a, reason=reason, force=force),
            "step",
            force=force,
        )
        for c in rep.checks:
            out.print(f"  {'[green]ok[/]' if c.passed else '[red]no[/]'} {c.name}: {c.detail}")

    @rollout_app.command("promote")
    def rollout_promote(
        manifest: ManifestArg = Path("shipway.yaml"),
        reason: Reason = "",
        force: Force = False,
    ) -> None:
        """Make the canary the champion."""
        _move(
            manifest,
            lambda r, a: r.promote(actor=a, reason=reason, force=force),
            "promote",
            force=force,
        )

    @rollout_app.command("rollback")
    def rollout_rollback(
        manifest: ManifestArg = Path("shipway.yaml"),
        reason: Reason = "",
    ) -> None:
        """Stop the canary; with none running, return to the previous champion at once."""
        _move(manifest, lambda r, a: r.rollback(actor=a, reason=reason), "rollback")

    @rollout_app.command("status")
    def rollout_status(
        manifest: ManifestArg = Path("shipway.yaml"),
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """The plan, the canary's step checks, and each shadow's agreement with the champion."""
        with _opened(manifest) as parts:
            r = parts.rollout
            st = r.state()
            rep = r.canary_report(st) if st.canary is not None else None
            shadows = [r.agreement(v) for v in st.shadows]
            if as_json:
                print(
                    orjson.dumps(
                        {
                            "state": st.to_dict(),
                            "canary": rep.to_dict() if rep else None,
                            "shadows": shadows,
                        }
                    ).decode()
                )
                return
            _print_state(st)
            if rep is not None:
                out.print(
                    f"canary v{rep.version}: {rep.requests} decisions at this step, "
                    f"{rep.errors} failed"
                )
                for c in rep.checks:
                    out.print(
                        f"  {'[green]ok[/]' if c.passed else '[red]no[/]'} {c.name}: {c.detail}"
                    )
            for a in shadows:
                ag = a.get("agreement")
                txt = (
                    "no comparisons yet"
                    if a["compared"] == 0
                    else (
                        f"agreement {ag:.4f}"
                        if ag is not None
                        else f"mean abs diff {a.get('mean_abs_diff', 0):.4f}"
                    )
                )
                out.print(
                    f"shadow v{a['version']}: {a['shadowed']} mirrored, {a['failed']} "
                    f"failed or timed out, {txt}"
                )

    @rollout_app.command("history")
    def rollout_history(
        manifest: ManifestArg = Path("shipway.yaml"),
        limit: Annotated[int, typer.Option(help="Most recent moves to show.")] = 50,
    ) -> None:
        """Every rollout move: who, when, why, and the plan after it."""
        with _opened(manifest) as parts:
            t = Table(title=f"rollout history of {parts.name}")
            for col in ("when", "who", "move", "why", "champion", "canary", "shadows"):
                t.add_column(col)
            for e in parts.rollout.history(limit):
                a = e["after"]
                canary = f"v{a['canary']} {a['canary_percent']:g}%" if a.get("canary") else ""
                t.add_row(
                    when(e["ts"]),
                    e["actor"],
                    e["action"],
                    e["reason"],
                    f"v{a['champion']}",
                    canary,
                    ", ".join(f"v{v}" for v in a.get("shadows", [])),
                )
            out.print(t)


__all__ = ["register"]
