"""``shipway sources|quarantine|datasets``: run a data source now, see its runs, read and
replay what it held, and read the dataset versions it kept."""

from __future__ import annotations

import asyncio
import time
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
    help="Data sources (files, SQL, HTTP push): validated, quarantined, then scored, kept as "
    "datasets or stored as labels.",
    no_args_is_help=True,
)
quarantine_app = typer.Typer(
    help="Rows a source could not use, with every rule each broke; replay after a fix.",
    no_args_is_help=True,
)
datasets_app = typer.Typer(
    help="Immutable dataset versions kept by train sources.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(sources_app, name="sources")
    app.add_typer(quarantine_app, name="quarantine")
    app.add_typer(datasets_app, name="datasets")


def _with_service(manifest: Path, permission: str, action: str, work: Any) -> Any:
    """Open the service, check the CLI caller may do ``action``, start its writers (not its
    schedule: that is the server's), run ``work(service, actor)`` on an event loop, stop."""
    from shipway.service import Service

    settings = Settings()
    try:
        service = Service.open(manifest, settings)
    except ShipwayError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    try:
        actor = cli_principal(service.store, settings, permission, action).actor
        service.start(schedule=False)
        return asyncio.run(work(service, actor))
    except ShipwayError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        service.stop()


@sources_app.command("run")
def sources_run(
    name: Annotated[str, typer.Argument(help="The source (its name in the manifest).")],
    manifest: ManifestArg = Path("shipway.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Take the source's new batches now: check their columns, validate, quarantine bad rows,
    and use the good ones (score: each a logged decision, answers to the sink; train: a dataset
    version; labels: feedback). Claims a killed run left are taken up first. Exit 1 if a batch
    failed."""
    with err.status(f"Source {name}: looking for new batches...") as status:
        started = time.monotonic()

        def progress(batch: str, done: int, total: int) -> None:
            rate = done / max(time.monotonic() - started, 1e-6)
            status.update(f"Source {name}: {batch}: {done} of {total} rows ({rate:,.0f} rows/s)")

        async def work(service: Any, actor: str) -> Any:
            return await service.run_source(name, actor, progress)

        result = _with_service(manifest, OPERATE, "sources run", work)
    if as_json:
        print(orjson.dumps(result.to_json()).decode())
    else:
        _print_run(result)
    if result.status == "failed":
        raise typer.Exit(1)


def _change(c: dict[str, Any]) -> str:
    what = c["change"].replace("_", " ")
    if c["change"] == "renamed":
        return f"{c['from']} renamed to {c['column']}"
    if c["change"] == "type_change":
        return f"{c['column']}: type {c['found']} where the contract says {c['expected']}"
    if c["change"] == "new_category":
        return f"{c['column']}: {c['distinct']} new categories in {c['rows']} rows {c['values']}"
    return f"{what}: {c['column']}"


def _print_run(result: Any) -> None:
    if not result.files:
        out.print(f"source {result.source}: nothing new", highlight=False)
    for f in result.files:
        used = {"stored": "kept", "labelled": "labelled"}.get(f.status, "scored")
        line = f"  {f.path}: {f.status}, {f.rows_in} rows, {f.rows_good} {used}, {f.rows_bad} bad"
        if f.resumed:
            line += " (taken up from a run that stopped)"
        if f.dataset_version is not None:
            line += f" -> dataset version {f.dataset_version}"
        elif f.sink:
            line += f" -> {f.sink}"
        out.print(line, highlight=False)
        for c in f.schema_changes:
            out.print(f"    schema change: {_change(c)}", highlight=False)
        if f.error:
            out.print(f"    {f.error}", highlight=False)
    for path in result.waiting:
        out.print(f"  {path}: changed moments ago, left for the next run", highlight=False)
    out.print(
        f"run {result.run_id}: {result.status}; {result.rows_in} rows in, {result.rows_good} "
        f"used, {result.rows_bad} quarantined (shipway quarantine list)",
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


@quarantine_app.command("show")
def quarantine_show(
    seq: Annotated[int, typer.Argument(help="The row's number (shipway quarantine list).")],
    manifest: ManifestArg = Path("shipway.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One quarantined row: where it came from, every rule it broke, the row as kept."""
    from shipway.data import ledger

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ_INPUTS, "quarantine show", reads_only=True)
        row = ledger.one_held(parts.store.engine, parts.name, seq)
    if row is None:
        err.print(f"[bold red]error:[/] no quarantined row {seq} in {manifest}", highlight=False)
        raise typer.Exit(1)
    if as_json:
        print(orjson.dumps(row).decode())
        return
    out.print(
        f"row {seq} of {row['source']}, {row['file']} row {row['row_index']}, held "
        f"{when(row['ts'])}, {row['status']}"
        + (f" (replayed {when(row['replayed_at'])})" if row["replayed_at"] else ""),
        highlight=False,
    )
    for v in row["violations"]:
        out.print(f"  {v['field']}: {v['rule']} (expected {v['expected']})", highlight=False)
    out.print(orjson.dumps(row["row"], option=orjson.OPT_INDENT_2).decode(), highlight=False)


@quarantine_app.command("replay")
def quarantine_replay(
    source: Annotated[str, typer.Argument(help="The source whose held rows to replay.")],
    manifest: ManifestArg = Path("shipway.yaml"),
    row: Annotated[
        list[int] | None, typer.Option("--row", help="Only these rows (repeat); default all.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """After a contract or source fix: check the source's held rows again with the manifest
    as it is now, use the ones that pass as the source would, keep the rest held with their
    reasons as of now. Audited. Exit 1 if the replay failed."""

    async def work(service: Any, actor: str) -> Any:
        return await service.replay_quarantine(source, actor, row or None)

    with err.status(f"Replaying the held rows of {source}..."):
        result = _with_service(manifest, OPERATE, "quarantine replay", work)
    if as_json:
        print(orjson.dumps(result.to_json()).decode())
    else:
        for f in result.files:
            out.print(f"  {f.path}: {f.rows_good} moved on, {f.rows_bad} still held")
            for c in f.schema_changes:
                out.print(f"    schema change: {_change(c)}", highlight=False)
            if f.error:
                out.print(f"    {f.error}", highlight=False)
        out.print(
            f"replay {result.run_id}: {result.rows_in} held rows checked again: "
            f"{result.rows_good} moved on, {result.rows_bad} still held",
            highlight=False,
        )
    if result.status == "failed":
        raise typer.Exit(1)


@datasets_app.command("list")
def datasets_list(
    manifest: ManifestArg = Path("shipway.yaml"),
    source: Annotated[str | None, typer.Option(help="Only this source.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Dataset versions, newest first: rows, content hash, cursor range, parent."""
    from shipway.data import datasets

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ, "datasets list", reads_only=True)
        found = datasets.versions(parts.store.engine, parts.name, source)
    if as_json:
        print(orjson.dumps(found).decode())
        return
    if not found:
        out.print("no dataset versions yet (a train source keeps one per new batch)")
        return
    t = Table(title="dataset versions")
    for col in ("source", "version", "created", "rows", "sha256", "parent", "cursor"):
        t.add_column(col)
    for d in found:
        cur = "" if d["cursor_to"] is None else f"{d['cursor_from']} .. {d['cursor_to']}"
        t.add_row(d["source"], str(d["version"]), when(d["created_at"]), str(d["rows"]),
                  d["sha256"][:16], str(d["parent"] or ""), cur)  # fmt: skip
    out.print(t)


@datasets_app.command("show")
def datasets_show(
    source: Annotated[str, typer.Argument(help="The train source.")],
    version: Annotated[int | None, typer.Argument(help="The version (default: newest).")] = None,
    manifest: ManifestArg = Path("shipway.yaml"),
) -> None:
    """One version's record, its columns and its first rows (checked against its hash)."""
    from shipway.data import datasets

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ_INPUTS, "datasets show", reads_only=True)
        record = datasets.get(parts.store.engine, parts.name, source, version)
        table = datasets.read(record)
    print(orjson.dumps(record, option=orjson.OPT_INDENT_2).decode())
    out.print(table.slice(0, 5).to_pandas().to_string(), highlight=False)


@datasets_app.command("diff")
def datasets_diff(
    source: Annotated[str, typer.Argument(help="The train source.")],
    a: Annotated[int, typer.Argument(help="The older version.")],
    b: Annotated[int, typer.Argument(help="The newer version.")],
    manifest: ManifestArg = Path("shipway.yaml"),
) -> None:
    """What changed between two versions: rows, columns, missing shares and means."""
    from shipway.data import datasets

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ, "datasets diff", reads_only=True)
        ta, tb = (
            datasets.read(datasets.get(parts.store.engine, parts.name, source, v)) for v in (a, b)
        )
    print(orjson.dumps(datasets.diff(ta, tb), option=orjson.OPT_INDENT_2).decode())


@datasets_app.command("export")
def datasets_export(
    source: Annotated[str, typer.Argument(help="The train source.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="File to write (.parquet/.csv).")],
    version: Annotated[int | None, typer.Option(help="The version (default: newest).")] = None,
    manifest: ManifestArg = Path("shipway.yaml"),
) -> None:
    """Write a version's rows to a file (checked against its hash first)."""
    from shipway.data import datasets

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ_INPUTS, "datasets export", reads_only=True)
        record = datasets.get(parts.store.engine, parts.name, source, version)
        table = datasets.read(record)
    if out_path.suffix.lower() == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, out_path)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, out_path)
    err.print(f"{record['rows']} rows of {source} v{record['version']} -> {out_path}")


__all__ = ["register"]
