"""``shipway data report SOURCE``: a source's live data against the pilot's, column by column
(missing, out of range, unseen categories, the monitor's drift distance, rows that break the
contract), in the terminal, as JSON or as one self-contained HTML file."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from shipway.cli.access import cli_principal
from shipway.cli.lifecycle import ManifestArg, _opened, err, out
from shipway.govern.roles import READ_INPUTS
from shipway.settings import Settings

data_app = typer.Typer(
    help="Data: how a source's live data compares with the pilot's.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("report")
def data_report(
    source: Annotated[str, typer.Argument(help="The source (its name in the manifest).")],
    manifest: ManifestArg = Path("shipway.yaml"),
    files: Annotated[
        int | None, typer.Option("--files", min=1, help="Only the newest N files (default: all).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write the report to this self-contained HTML file."),
    ] = None,
) -> None:
    """Measure a source's live data against the pilot's before launch: per contract column the
    missing, out-of-range and unseen-category shares, the distance the monitor's drift test
    finds against the champion's reference data, and the rows that break the contract. Reads
    the source's files (nothing is taken, scored or quarantined). Columns worst first."""
    import pyarrow.parquet as pq

    from shipway.data.report import find_source, quality_report, read_source, render_html

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ_INPUTS, "data report", reads_only=True)
        m = parts.manifest
        spec = find_source(m, source)
        with err.status(f"Source {source}: reading its files..."):
            live = read_source(spec, parts.location.manifest_path.parent, m.contract, files)
        version = parts.champion_version()
        reference, _outputs = parts.monitor.reference(version)
        mv = parts.registry.get(parts.name, version)
        pilot = None
        if mv.reference_sha256:
            names = [f.name for f in m.contract.inputs]
            data = pq.read_table(
                io.BytesIO(parts.store.artifacts.read_verified(mv.reference_sha256))
            )
            pilot = data.select([n for n in names if n in data.column_names])
        report = quality_report(
            live.table,
            m.contract,
            reference,
            pilot,
            alpha=m.monitor.alpha,
            source=spec.name,
            files=live.files,
            model_version=version,
            hidden=set(m.pii),
        )
    if html is not None:
        try:
            html.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            err.print(f"[bold red]error:[/] cannot write {escape(str(html))}: {exc.strerror}")
            raise typer.Exit(1) from None
    if as_json:
        print(orjson.dumps(report).decode())
    else:
        print_report(report)
    if html is not None:
        (err if as_json else out).print(f"wrote {html}", markup=False, highlight=False)


def print_report(r: dict[str, Any]) -> None:
    from shipway.data.report import distance, share, unseen

    pilot = f"the pilot's {r['pilot_rows']} rows" if r["pilot_rows"] is not None else "the pilot"
    out.print(
        f"source {r['source']}: {r['rows_in']} rows from {len(r['files'])} file(s) against "
        f"{pilot} (model version {r['model_version']})",
        markup=False,
        highlight=False,
    )
    rules = ", ".join(f"{k} {v}" for k, v in r["rules"].items())
    out.print(
        f"{r['rows_bad']} rows ({share(r['bad_share'])}) break the contract"
        + (f": {rules}" if rules else ""),
        markup=False,
        highlight=False,
    )
    if r["absent_columns"]:
        out.print(f"columns absent: {', '.join(r['absent_columns'])}", markup=False)
    if r["extra_columns"]:
        out.print(
            f"columns not in the contract, set aside: {', '.join(r['extra_columns'])}",
            markup=False,
        )
    t = Table(title="columns, worst first")
    for col in (
        "column",
        "type",
        "missing",
        "pilot missing",
        "out of range",
        "unseen",
        "wrong type",
        "distance (monitor)",
        "drifted",
    ):
        t.add_column(col)
    for c in r["columns"]:
        kind = c["type"] if c["role"] == "feature" else f"{c['type']} ({c['role']})"
        seen = share(c["unseen_share"])
        if c["unseen_values"]:
            seen += f": {unseen(c, 3)}"
        t.add_row(
            *(
                Text(str(v))
                for v in (
                    c["name"],
                    kind,
                    share(c["missing_share"]),
                    share(c["pilot_missing_share"]),
                    share(c["out_of_range_share"]),
                    seen,
                    share(c["wrong_type_share"]),
                    distance(c),
                    "yes" if c["drifted"] else "no",
                )
            )
        )
    out.print(t)


__all__ = ["register"]
