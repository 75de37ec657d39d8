"""``shipway sources|quarantine``: run a data source now, see its runs, read what it held."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from shipway.cli.access import cli_principal
from shipway.cli.lifecycle import ManifestArg, _opened, err, out, when
from shipway.errors import ShipwayError
from shipway.govern.roles import OPERATE, READ, READ_INPUTS
from shipway.settings import Settings

sources_app = typer.Typer(
    help="Data sources: new files validated, quarantined and scored.", no_args_is_help=True
)
quarantine_app = typer.Typer(
    help="Rows a source could not use, with every rule each broke.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(sources_app, name="sources")
    app.add_typer(quarantine_app, name="quarantine")


@sources_app.command("run")
def sources_run(
    name: Annotated[str, typer.Argument(help="The source (its name in the manifest).")],
    manifest: ManifestArg = Path("shipway.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Take the source's new files now: validate, quarantine bad rows, score the good ones
    (each a logged decision) and write the answers to the sink. Exit 1 if a file failed."""
    from shipway.service import Service

    settings = Settings()
    try:
        service = Service.open(manifest, settings)
    except ShipwayError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    try:
        actor = cli_principal(service.store, settings, OPERATE, "sources run").actor
        service.start(schedule=False)
        with err.status(f"Source {name}: looking for new files...") as status:

            def progress(file: str, done: int, total: int) -> None:
                status.update(f"Source {name}: {file}: {done} of {total} good rows scored")

            result = asyncio.run(service.run_source(name, actor, progress))
    except ShipwayError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        service.stop()
    if as_json:
        print(
            orjson.dumps(
                {
                    "run_id": result.run_id,
                    "status": result.status,
                    "files": [f.__dict__ for f in result.files],
                    "waiting": result.waiting,
                }
            ).decode()
        )
    else:
        _print_run(result)
    if result.status == "failed":
        raise typer.Exit(1)


def _print_run(result: Any) -> None:
    if not result.files:
        out.print(f"source {result.source}: no new files", highlight=False)
    for f in result.files:
        line = f"  {f.path}: {f.status}, {f.rows_in} rows, {f.rows_good} scored, {f.rows_bad} bad"
        if f.sink:
            line += f" -> {f.sink}"
        out.print(line, highlight=False)
        if f.ignored_columns:
            out.print(f"    columns not in the contract, ignored: {f.ignored_columns}")
        if f.error:
            out.print(f"    {f.error}", highlight=False)
    for path in result.waiting:
        out.print(f"  {path}: changed moments ago, left for the next run", highlight=False)
    out.print(
        f"run {result.run_id}: {result.status}; {result.rows_in} rows in, {result.rows_good} "
        f"scored, {result.rows_bad} quarantined (shipway quarantine list)",
        highlight=False,
    )


@sources_app.command("status")
def sources_status(
    manifest: ManifestArg = Path("shipway.yaml"),
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The newest runs of the service's sources, with the files each took."""
    from shipway.data import ledger

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ, "sources status", reads_only=True)
        found = ledger.runs(parts.store.engine, parts.name, source)
    if as_json:
        print(orjson.dumps(found).decode())
        return
    t = Table(title="source runs")
    for col in ("started", "source", "status", "files", "rows in", "scored", "bad", "error"):
        t.add_column(col)
    for r in found:
        t.add_row(
            when(r["started_at"]),
            r["source"],
            r["status"],
            str(r["files"]),
            str(r["rows_in"]),
            str(r["rows_good"]),
            str(r["rows_bad"]),
            (r["error"] or "")[:80],
        )
    out.print(t)


@quarantine_app.command("list")
def quarantine_list(
    manifest: ManifestArg = Path("shipway.yaml"),
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many rows, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Quarantined rows, newest first: file, row, every rule broken, the row as kept."""
    from shipway.data import ledger

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ_INPUTS, "quarantine list", reads_only=True)
        rows = ledger.quarantined(parts.store.engine, parts.name, source, limit)
    if as_json:
        print(orjson.dumps(rows).decode())
        return
    if not rows:
        out.print("nothing is quarantined")
        return
    t = Table(title="quarantined rows")
    for col in ("when", "source", "file", "row", "broken rules"):
        t.add_column(col)
    for r in rows:
        broken = "; ".join(f"{v['field']}: {v['rule']} ({v['expected']})" for v in r["violations"])
        t.add_row(when(r["ts"]), r["source"], r["file"] or "", str(r["row_index"]), broken)
    out.print(t)


__all__ = ["register"]
