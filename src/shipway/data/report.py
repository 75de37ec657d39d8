"""The data quality report: a source's live data against the pilot's, column by column, so the
messiness production data brings is measured before launch, not found after it.

For every input column of the contract the report gives the share of rows that are missing
(beside the pilot's share), out of the contract's range, a category the contract does not list
(with the values and their counts), or of the wrong type; and the distance between the live
values and the pilot's, measured with the monitor's own drift statistics
(:func:`shipway.monitor.drift.drift_report`) against the champion's reference data recorded at
``init``, with the monitor's verdict. Ids, metadata and dates are not drift-tested, as in the
monitor. Rows are counted as a source's run counts them: columns the contract does not name are
set aside, and the contract's validator names every rule each bad row breaks.

Every share is of the rows read. Columns are ranked worst first: those the monitor would call
drifted (the most distant, relative to the drift floor, first); then the others by the share of
rows with a problem in that column (missing beyond the pilot's share, out of range, unseen, of
the wrong type); then by distance.

:func:`quality_report` is pure (a table in, a JSON-able dict out); :func:`read_source` reads a
source's files for it, and :func:`render_html` gives one self-contained page.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shipway.contract import Contract
from shipway.data.files import file_format, new_files, read_table
from shipway.errors import InputError
from shipway.manifest import ContractSpec, InputField, Manifest, SourceSpec
from shipway.monitor.drift import Reference, drift_report

#: Unseen category values listed per column, the most frequent first (all are counted).
MAX_UNSEEN = 20
#: Bad rows shown with their reasons.
MAX_EXAMPLES = 10
#: What stands for the value of a personal field (``pii:`` in the manifest).
HIDDEN = "(personal: not shown)"

# -- reading a source -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveData:
    """A source's files read as one table, and each file's name and row count, in order."""

    table: pa.Table
    files: list[tuple[str, int]]


def find_source(manifest: Manifest, name: str) -> SourceSpec:
    """The manifest's source called ``name``; an InputError naming the ones it has if none."""
    for spec in manifest.sources:
        if spec.name == name:
            return spec
    known = ", ".join(s.name for s in manifest.sources)
    has = f"its sources are: {known}" if known else "it declares none (see sources: in the docs)"
    raise InputError(f"the manifest has no source named {name!r}; {has}")


def read_source(
    spec: SourceSpec, base: Path, contract: ContractSpec, newest: int | None = None
) -> LiveData:
    """Every file the source's glob matches (or the ``newest`` few), oldest first, each read as
    the contract reads it, as one table. The source's sink and files it already took are read
    too: the report looks at the data, it takes nothing. ``base`` is the manifest's folder."""
    if spec.kind == "sql":
        return _read_sql(spec, contract)
    if spec.kind != "files":
        raise InputError(
            f"source {spec.name!r} is of kind {spec.kind!r}; the data report reads files and "
            "sql sources (for a push source, save a sample as a file and point a files "
            "source at it)"
        )
    if not spec.path:
        raise InputError(f"source {spec.name!r} has no path (the glob of its files)")
    sink = Path(spec.sink.path) if spec.sink is not None and spec.sink.path else None
    sink = sink if sink is None or sink.is_absolute() else base / sink
    found, changing = new_files(spec.path, base, 0.0, (), exclude=sink)
    paths = [c.path for c in found] + changing  # changing: modified while read, or dated later
    if newest is not None:
        paths = paths[-newest:] if newest > 0 else []
    if not paths:
        raise InputError(
            f"source {spec.name!r}: no files match {spec.path!r} (relative to {base}); "
            "nothing to report on"
        )
    tables: list[pa.Table] = []
    files: list[tuple[str, int]] = []
    renamed = spec.schema_changes.map
    for path in paths:
        table = read_table(path, file_format(path, spec.format), contract)
        if renamed:  # the source's declared renames, old name to the contract's
            table = table.rename_columns(
                [
                    renamed[c] if c in renamed and renamed[c] not in table.column_names else c
                    for c in table.column_names
                ]
            )
        tables.append(table)
        files.append((_shown(path, base), table.num_rows))
    return LiveData(_concat(tables), files)


def _read_sql(spec: SourceSpec, contract: ContractSpec) -> LiveData:
    """The first ``fetch_rows`` rows of a SQL source's query in cursor order; nothing taken."""
    from shipway.data.files import normalise
    from shipway.data.sql import Reader

    reader = Reader(spec)
    try:
        got = reader.next_batch((None, []))
    finally:
        reader.close()
    if got is None:
        raise InputError(f"source {spec.name!r}: the query returns no rows; nothing to report on")
    table = got[0]
    renamed = {o: n for o, n in spec.schema_changes.map.items() if n not in table.column_names}
    if renamed:
        table = table.rename_columns([renamed.get(c, c) for c in table.column_names])
    return LiveData(normalise(table, contract), [(f"sql {spec.name}", table.num_rows)])


def _shown(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _concat(tables: list[pa.Table]) -> pa.Table:
    """One table. Types are promoted (int to float); a column that is text in one file and
    numbers in another is read as text, which the contract's checks read as a CSV's text."""
    kinds: dict[str, set[pa.DataType]] = {}
    for f in (f for t in tables for f in t.schema if not pa.types.is_null(f.type)):
        kinds.setdefault(f.name, set()).add(f.type)
    texts = (pa.string(), pa.large_string())
    text = {n for n, ts in kinds.items() if len(ts) > 1 and any(t in texts for t in ts)}
    schemas = [
        pa.schema([f.with_type(pa.string()) if f.name in text else f for f in t.schema])
        for t in tables
    ]
    try:
        cast = [t.cast(s) for t, s in zip(tables, schemas, strict=True)]
        return pa.concat_tables(cast, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"the source's files do not fit together as one table: {first}") from None


# -- measuring one column --------------------------------------------------------------------------

_NUMBER = r"^\s*[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)\s*$"


def _plain_array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


def _numbers(col: pa.Array) -> pa.Array:
    """The column as float64: text that reads as a number becomes it, anything else null."""
    typ = col.type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        ok = pc.match_substring_regex(col, _NUMBER)
        return pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, col, None)), pa.float64())
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return pc.cast(col, pa.float64())
    return pa.nulls(len(col), pa.float64())


def _plain(v: Any) -> Any:
    """A value as JSON carries it."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return str(v)


@dataclass
class _Measure:
    rows: int
    missing: int = 0
    out_of_range: int | None = None
    unseen: Counter[Any] | None = None
    summary: dict[str, float] | None = None
    numbers: pa.Array | None = None
    present: bool = True

    def share(self, count: int | None) -> float | None:
        if count is None:
            return None
        return count / self.rows if self.rows else 0.0


def _measure(field: InputField, col: pa.Array) -> _Measure:
    """Missing values, values out of range or unseen, and a numeric summary of one column."""
    m = _Measure(len(col), missing=col.null_count)
    if pa.types.is_floating(col.type):
        m.missing += int(pc.sum(pc.is_nan(col)).as_py() or 0)
    if field.type in ("int", "float"):
        m.numbers = _numbers(col)
        x = m.numbers.to_numpy(zero_copy_only=False)
        x = x[np.isfinite(x)]
        if field.min is not None or field.max is not None:
            lo = -math.inf if field.min is None else field.min
            hi = math.inf if field.max is None else field.max
            m.out_of_range = int(np.count_nonzero((x < lo) | (x > hi)))
        if len(x):
            m.summary = {
                "min": float(x.min()),
                "max": float(x.max()),
                "mean": float(x.mean()),
                "std": float(x.std()),
            }
    elif field.type == "category":
        allowed = frozenset(field.values or ())
        kinds = {type(v) for v in allowed}
        m.unseen = Counter()
        counts = pc.value_counts(col)
        for v, n in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        ):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            known = (type(v) in kinds or (type(v) is int and float in kinds)) and v in allowed
            if not known:
                m.unseen[v] += n
    return m


#: Why a column has no distance: its code, in a word, and in a sentence.
_SKIPPED = {
    "id": ("not tested (id)", "ids are not drift-tested (as in the monitor)"),
    "metadata": ("not tested (metadata)", "metadata is not drift-tested (as in the monitor)"),
    "datetime": ("not tested (date)", "dates are not drift-tested (as in the monitor)"),
    "absent": ("column absent", "the column is absent from the live data"),
    "no_reference": ("no reference", "the champion's reference data lacks this column"),
    "no_values": ("no values", "no values to compare"),
}


def _not_tested(field: InputField, present: bool, reference: Reference) -> str | None:
    """Why a column has no distance, as a key of ``_SKIPPED`` (None: it has one)."""
    if field.role != "feature":
        return field.role
    if field.type == "datetime":
        return "datetime"
    if not present:
        return "absent"
    if field.name not in reference.features():
        return "no_reference"
    return None


# -- the report ------------------------------------------------------------------------------------


def quality_report(
    table: pa.Table,
    contract: ContractSpec,
    reference: Reference,
    pilot: pa.Table | None = None,
    *,
    alpha: float = 0.05,
    source: str | None = None,
    files: Sequence[tuple[str, int]] = (),
    model_version: int | None = None,
    hidden: Collection[str] = (),
) -> dict[str, Any]:
    """The report of ``table`` (live rows) against the contract, the monitor's ``reference``
    (inputs, prepared by :meth:`shipway.monitor.engine.Monitor.reference`) and, when given,
    the ``pilot``'s own rows (the reference data, for its missing, out-of-range and unseen
    shares). ``files`` (name, rows) say where the rows came from, in order; values of
    ``hidden`` (personal) fields are counted but never shown."""
    n = table.num_rows
    names = [f.name for f in contract.inputs]
    extra = [c for c in table.column_names if c not in names]
    absent = [c for c in names if c not in table.column_names]
    live = table.drop_columns(extra) if extra else table  # not the model's: set aside

    checked = Contract(contract).validate_table(live)
    broken: dict[str, Counter[str]] = {name: Counter() for name in names}
    by_rule: Counter[str] = Counter()
    for reasons in checked.reasons:
        for v in reasons:
            broken.setdefault(v["field"], Counter())[v["rule"]] += 1
            by_rule[v["rule"]] += 1

    measured: dict[str, _Measure] = {}
    current: dict[str, Any] = {}
    for f in contract.inputs:
        if f.name not in live.column_names:
            continue
        col = _plain_array(live.column(f.name))
        m = measured[f.name] = _measure(f, col)
        if _not_tested(f, True, reference) is None:
            current[f.name] = m.numbers if f.name in reference.numeric else col
    pilot_measured: dict[str, _Measure] = {}
    if pilot is not None:
        for f in contract.inputs:
            if f.name in pilot.column_names:
                pilot_measured[f.name] = _measure(f, _plain_array(pilot.column(f.name)))
    drift = drift_report(reference, current, alpha) if current else None
    distances = drift["features"] if drift else {}

    columns = [
        _column(
            f,
            measured.get(f.name)
            or _Measure(n, missing=n, present=False),  # absent: every row is missing
            pilot_measured.get(f.name),
            broken.get(f.name, Counter()),
            distances.get(f.name),
            _not_tested(f, f.name in measured, reference),
            f.name in hidden,
        )
        for f in contract.inputs
    ]
    columns.sort(key=_worst_first, reverse=True)

    offsets = np.cumsum([0, *(rows for _, rows in files)])
    examples = []
    for reasons in checked.reasons[:MAX_EXAMPLES]:
        row = int(reasons[0]["row"]) if reasons else -1
        k = int(np.searchsorted(offsets, row, "right")) - 1
        where = files[k][0] if files and 0 <= k < len(files) else None
        examples.append(
            {
                "file": where,
                "row": row - int(offsets[k]) if where is not None else row,
                "violations": [
                    {
                        "field": v.get("field"),
                        "rule": v.get("rule"),
                        "value": HIDDEN if v.get("field") in hidden else _plain(v.get("value")),
                        "expected": v.get("expected"),
                    }
                    for v in reasons
                ],
            }
        )
    bad = checked.bad_count
    return {
        "source": source,
        "model_version": model_version,
        "files": [{"path": name, "rows": rows} for name, rows in files],
        "rows_in": n,
        "rows_bad": bad,
        "bad_share": bad / n if n else 0.0,
        "pilot_rows": pilot.num_rows if pilot is not None else None,
        "rules": dict(by_rule.most_common()),
        "absent_columns": absent,
        "extra_columns": extra,
        "alpha": alpha,
        "drifted": drift["drifted"] if drift else [],
        "drift_share": drift["drift_share"] if drift else None,
        "columns": columns,
        "examples": examples,
    }


def _column(
    f: InputField,
    m: _Measure,
    p: _Measure | None,
    broken: Counter[str],
    d: dict[str, Any] | None,
    skipped: str | None,
    hidden: bool,
) -> dict[str, Any]:
    """One column's entry: its live measures beside the pilot's (``p``), the rules its values
    broke, and the monitor's drift figures ``d`` (or why there are none)."""
    category = f.type == "category"
    effect, floor = (d.get("effect"), d.get("floor")) if d else (None, None)
    if skipped is None and effect is None:
        skipped = "no_values"
    if d and hidden and d.get("unseen_levels"):
        d = {**d, "unseen_levels": [HIDDEN]}
    unseen = m.unseen or Counter()
    ranked = sorted(unseen.items(), key=lambda kv: (-kv[1], str(kv[0])))
    missing, pilot_missing = m.share(m.missing), p.share(p.missing) if p else None
    out_of_range, unseen_share = m.share(m.out_of_range), m.share(sum(unseen.values()))
    wrong_type = m.share(broken.get("type", 0))
    problems = max(0.0, (missing or 0) - (pilot_missing or 0)) + (out_of_range or 0)
    return {
        "name": f.name,
        "type": f.type,
        "role": f.role,
        "present": m.present,
        "missing_share": missing,
        "pilot_missing_share": pilot_missing,
        "range": None if f.min is None and f.max is None else [f.min, f.max],
        "out_of_range_share": out_of_range,
        "pilot_out_of_range_share": p.share(p.out_of_range) if p else None,
        "unseen_share": unseen_share if category else None,
        "pilot_unseen_share": p.share(sum((p.unseen or {}).values())) if p and category else None,
        "unseen_distinct": len(unseen) if category else None,
        "unseen_values": [
            {"value": HIDDEN if hidden else _plain(v), "count": c} for v, c in ranked[:MAX_UNSEEN]
        ]
        if category
        else None,
        "wrong_type_share": wrong_type,
        "broken": dict(sorted(broken.items())),
        "broken_share": m.share(sum(broken.values())),
        "live": m.summary,
        "pilot": p.summary if p else None,
        "drift": d,
        "drift_skipped": skipped,
        "drift_note": _SKIPPED[skipped][1] if skipped else None,
        "distance": effect,
        "distance_name": d.get("effect_name") if d else None,
        "distance_vs_floor": effect / floor if effect is not None and floor else None,
        "drifted": bool(d and d.get("drifted")),
        "problem_share": min(1.0, problems + (unseen_share or 0) + (wrong_type or 0)),
    }


def _worst_first(c: dict[str, Any]) -> tuple[bool, float, float, float]:
    ratio = c["distance_vs_floor"] or 0.0
    return (c["drifted"], ratio if c["drifted"] else 0.0, c["problem_share"], ratio)


# -- showing it -----------------------------------------------------------------------------------


def share(v: float | None) -> str:
    """A share as a percentage ("-" when it does not apply)."""
    if v is None:
        return "-"
    if 0 < v < 0.001:
        return "<0.1%"
    return f"{v:.1%}"


def distance(c: Mapping[str, Any]) -> str:
    """A column's distance as the monitor names it and how far past its floor, or in a word
    why it has none."""
    if c["distance"] is None:
        return _SKIPPED[c["drift_skipped"]][0] if c["drift_skipped"] else "-"
    ratio = c["distance_vs_floor"]
    times = f" ({ratio:.1f}x floor)" if ratio is not None and math.isfinite(ratio) else ""
    return f"{c['distance_name']} {c['distance']:.3g}{times}"


def unseen(c: Mapping[str, Any], limit: int = 5) -> str:
    """A column's unseen categories as ``value (count)``, the most frequent first."""
    values = c["unseen_values"] or []
    text = ", ".join(f"{v['value']} ({v['count']})" for v in values[:limit])
    more = (c["unseen_distinct"] or 0) - min(limit, len(values))
    return f"{text}, and {more} more" if more > 0 else text


_CSS = (
    "body{font:14px/1.45 system-ui,sans-serif;color:#1d2330;margin:2rem;max-width:80rem}"
    "h1{font-size:1.5rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:2rem 0 .5rem}"
    ".lead{color:#4a5161}.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0}"
    ".card{border:1px solid #d8dce4;border-radius:6px;padding:.6rem 1rem;min-width:9rem}"
    ".card b{display:block;font-size:1.3rem}table{border-collapse:collapse;width:100%}"
    "th,td{border-bottom:1px solid #e3e6ec;padding:.35rem .5rem;text-align:left;"
    "vertical-align:top}th{background:#f4f6f9}.n{text-align:right}"
    ".bad{background:#fde8e8;color:#8a1c1c}.warn{background:#fff4dc;color:#7a4b00}"
    ".muted,footer{color:#6b7383}footer{margin-top:2rem;font-size:12px}"
)

#: A table cell: its text, or its text and CSS classes.
Cell = str | tuple[str, str]


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _table(head: Sequence[str], rows: Iterable[Sequence[Cell]]) -> str:
    body = []
    for row in rows:
        cells = ((c, "") if isinstance(c, str) else c for c in row)
        body.append(
            "<tr>"
            + "".join(
                f'<td class="{k}">{_e(t)}</td>' if k else f"<td>{_e(t)}</td>" for t, k in cells
            )
            + "</tr>"
        )
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _level(v: float | None, numeric: bool = True) -> str:
    """A share's CSS classes: over 5% is bad, over nothing a warning."""
    level = "" if v is None or v <= 0 else "bad" if v >= 0.05 else "warn"
    return " ".join(c for c in ("n" if numeric else "", level) if c)


def _num(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page: inline style, no script, nothing fetched,
    every value escaped."""
    r, cols = report, report["columns"]
    title = f"Data quality: source {r['source']}" if r["source"] else "Data quality"
    pilot = f"the pilot's {r['pilot_rows']} rows" if r["pilot_rows"] is not None else "the pilot"
    version = f" (model version {r['model_version']})" if r["model_version"] is not None else ""
    page = [
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><h1>{_e(title)}</h1>",
        f'<p class="lead">{_e(r["rows_in"])} live rows from {len(r["files"])} file(s) against '
        f"{_e(pilot)}{_e(version)}.</p>",
        f'<div class="cards"><div class="card"><b>{_e(r["rows_in"])}</b>rows in</div>',
        f'<div class="card {_level(r["bad_share"], False)}"><b>{_e(r["rows_bad"])}</b>rows '
        f"break the contract ({_e(share(r['bad_share']))})</div>",
        f'<div class="card {"bad" if r["drifted"] else ""}"><b>{len(r["drifted"])}</b>columns '
        f"drifted (the monitor's test, alpha {_e(r['alpha'])})</div></div>",
    ]
    if r["absent_columns"]:
        absent = ", ".join(r["absent_columns"])
        page.append(f'<p class="bad">Contract columns absent from the data: {_e(absent)}</p>')
    if r["extra_columns"]:
        extra = ", ".join(r["extra_columns"])
        page.append(f'<p class="muted">Columns not in the contract, set aside: {_e(extra)}</p>')

    page.append("<h2>Columns, worst first</h2>")
    head = ["column", "type", "missing", "pilot missing", "out of range", "unseen categories"]
    head += ["wrong type", "rules broken", "distance (monitor)", "drifted"]
    rows: list[list[Cell]] = []
    for c in cols:
        more_missing = (c["missing_share"] or 0) - (c["pilot_missing_share"] or 0)
        seen = share(c["unseen_share"]) + (f": {unseen(c)}" if c["unseen_values"] else "")
        rows.append(
            [
                c["name"],
                c["type"] if c["role"] == "feature" else f"{c['type']} ({c['role']})",
                (share(c["missing_share"]), _level(more_missing)),
                (share(c["pilot_missing_share"]), "n"),
                (share(c["out_of_range_share"]), _level(c["out_of_range_share"])),
                (seen, _level(c["unseen_share"], False)),
                (share(c["wrong_type_share"]), _level(c["wrong_type_share"])),
                ", ".join(f"{k} {v}" for k, v in c["broken"].items()) or "-",
                distance(c),
                ("yes", "bad") if c["drifted"] else "no",
            ]
        )
    page.append(_table(head, rows))

    numeric = [c for c in cols if c["live"] or c["pilot"]]
    if numeric:
        page.append("<h2>Numbers: live against the pilot</h2>")
        head = ["column", "allowed range", "live min", "live mean", "live max"]
        head += ["pilot min", "pilot mean", "pilot max"]
        rows = []
        for c in numeric:
            lo, hi = c["range"] or (None, None)
            row: list[Cell] = [c["name"], f"{_num(lo)} .. {_num(hi)}" if c["range"] else "-"]
            for side in (c["live"] or {}, c["pilot"] or {}):
                row += [(_num(side.get(k)), "n") for k in ("min", "mean", "max")]
            rows.append(row)
        page.append(_table(head, rows))

    for c in cols:
        if c["unseen_values"]:
            page.append(
                f"<h2>Unseen categories of {_e(c['name'])}</h2><p>{_e(c['unseen_distinct'])} "
                "value(s) the contract does not list, the most frequent first:</p>"
            )
            page.append(
                _table(
                    ["value", "rows"],
                    [[v["value"], (str(v["count"]), "n")] for v in c["unseen_values"]],
                )
            )
    if r["rules"]:
        page.append("<h2>Rules broken</h2>")
        page.append(
            _table(["rule", "violations"], [[k, (str(v), "n")] for k, v in r["rules"].items()])
        )
    if r["examples"]:
        page.append("<h2>Rows that break the contract (the first few)</h2>")
        rows = [
            [ex["file"] or "-", (str(ex["row"]), "n")]
            + [_num(v[k]) for k in ("field", "rule", "value", "expected")]
            for ex in r["examples"]
            for v in ex["violations"]
        ]
        page.append(_table(["file", "row", "field", "rule", "value", "expected"], rows))
    page.append("<h2>Files</h2>")
    page.append(_table(["file", "rows"], [[f["path"], (str(f["rows"]), "n")] for f in r["files"]]))
    page.append(
        "<footer>Shares are of the rows read. Missing: null or NaN. Out of range: outside the "
        "contract's min and max. Unseen: a category the contract does not list. Distance: the "
        "monitor's effect size against the champion's reference data (Wasserstein distance over "
        "the reference's standard deviation for numbers, Jensen-Shannon distance for "
        "categories); drifted: the monitor's verdict (corrected p-value below alpha and the "
        "effect at or above its floor).</footer></body></html>"
    )
    return "\n".join(page)


__all__ = [
    "HIDDEN",
    "LiveData",
    "distance",
    "find_source",
    "quality_report",
    "read_source",
    "render_html",
    "share",
    "unseen",
]
