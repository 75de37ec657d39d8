"""How a batch's columns differ from the contract, and what the source's policy does about it.

A batch may arrive with a renamed, added or missing column, a column of another type, or a
category value the contract has not seen. Each difference is a schema change: recorded with
the batch as a diff, decided by ``schema_changes`` (hold the batch, or go on), never treated
as drift and never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shipway.manifest import ContractSpec, InputField, SchemaPolicySpec

#: How many unseen category values a diff names (with the count of the rest).
_SHOWN_VALUES = 10


@dataclass
class SchemaCheck:
    """The batch with the policy applied (renamed, new columns dropped), what changed, and
    why the batch is held, if it is."""

    table: pa.Table
    changes: list[dict[str, Any]] = field(default_factory=list)
    refusal: str | None = None


def _kind_fits(f: InputField, t: pa.DataType) -> bool:
    """Whether a column of type ``t`` carries ``f``'s values without a change of kind."""
    if pa.types.is_null(t):
        return True
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if f.type in ("int", "float"):
        return numeric
    if f.type == "bool":
        return pa.types.is_boolean(t)
    if f.type == "category":
        texts = all(isinstance(v, str) for v in f.values or [])
        return (pa.types.is_string(t) or pa.types.is_large_string(t)) if texts else numeric
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_timestamp(t)


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return str(t)


def check(
    table: pa.Table,
    contract: ContractSpec,
    policy: SchemaPolicySpec,
    keep: tuple[str, ...] = (),
) -> SchemaCheck:
    """Compare ``table``'s columns with ``contract`` and apply ``policy``. ``keep``: columns
    the source needs besides the contract's (a train source's label)."""
    changes: list[dict[str, Any]] = []
    held: list[str] = []
    renames = {old: new for old, new in policy.map.items() if old in table.column_names}
    if renames:
        table = table.rename_columns([renames.get(c, c) for c in table.column_names])
        for old, new in renames.items():
            changes.append({"change": "renamed", "column": new, "from": old})
    fields = {f.name: f for f in contract.inputs}
    extra = [c for c in table.column_names if c not in fields and c not in keep]
    for c in extra:
        changes.append({"change": "new_column", "column": c, "type": _type_name(table[c].type)})
    if extra:
        if policy.new_columns == "reject":
            held.append(f"new columns {extra} (schema_changes.new_columns: reject)")
        table = table.drop_columns(extra)
    missing = [f.name for f in contract.inputs if f.name not in table.column_names]
    for c in missing:
        changes.append({"change": "missing_column", "column": c})
    if missing and policy.missing_columns == "reject":
        hint = ""
        if extra:
            hint = f"; if a column was renamed, map it: schema_changes.map: {{{extra[0]}: ...}}"
        held.append(f"missing columns {missing} (schema_changes.missing_columns: reject){hint}")
    for name, f in fields.items():
        if name not in table.column_names:
            continue
        col = table[name]
        if not _kind_fits(f, col.type):
            changes.append(
                {
                    "change": "type_change",
                    "column": name,
                    "expected": f.type,
                    "found": _type_name(col.type),
                }
            )
            if policy.type_changes == "reject":
                held.append(
                    f"{name} is {_type_name(col.type)}, the contract says {f.type} "
                    "(schema_changes.type_changes: reject)"
                )
        elif f.type == "category" and f.values:
            unseen = _unseen(col, f)
            if unseen:
                changes.append({"change": "new_category", "column": name, **unseen})
    refusal = "; ".join(held) if held else None
    return SchemaCheck(table, changes, refusal)


def _unseen(col: pa.ChunkedArray, f: InputField) -> dict[str, Any] | None:
    """Values of a category column the contract does not list, with counts."""
    try:
        allowed = pa.array(list(f.values or []), type=col.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    outside = pc.invert(pc.is_in(col, value_set=allowed))
    outside = pc.and_(outside, pc.is_valid(col))
    found = pc.filter(col, outside)
    if len(found) == 0:
        return None
    counts = pc.value_counts(found).to_pylist()
    counts.sort(key=lambda d: (-d["counts"], str(d["values"])))
    shown = {str(d["values"]): int(d["counts"]) for d in counts[:_SHOWN_VALUES]}
    return {"values": shown, "distinct": len(counts), "rows": len(found)}


__all__ = ["SchemaCheck", "check"]
