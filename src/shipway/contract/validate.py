"""Enforcing the contract.

Two entry points share one set of rules:

* :meth:`Contract.validate_records` checks JSON records (the request path). One record is
  checked with plain Python (cheapest for one row); a batch is transposed into columns and the
  range checks run vectorised with NumPy.
* :meth:`Contract.validate_table` checks a PyArrow table (ingestion, batch scoring): every rule
  runs as a columnar kernel and only the rows that fail are visited to name their reason.

A violation is a dict ``{"row", "field", "rule", "value", "expected"}``; rules are
``not_object``, ``unknown_field``, ``required``, ``type``, ``nullable``, ``min``, ``max`` and
``category``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shipway.manifest import ContractSpec, InputField

Violation = dict[str, Any]

_INT_TYPES = (int,)
_EXPECTED_TYPE = {
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "category": "one of the declared values",
    "string": "string",
    "datetime": "a date and time (ISO 8601, e.g. 2026-01-31 or 2026-01-31T12:00:00Z)",
}


def is_datetime(v: Any) -> bool:
    """An ISO 8601 date or date and time, as text."""
    if type(v) is not str or not 8 <= len(v) <= 40:
        return False
    try:
        datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


class _Missing:
    """Stands for a field absent from a record (already reported as ``required``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def echo(v: Any) -> Any:
    """A value as a violation shows it: scalars as sent (long text cut short), an object or a
    list summarised, so an error body never carries (or fails on) a large or deep structure."""
    if isinstance(v, dict):
        return f"<an object with {len(v)} keys>"
    if isinstance(v, list | tuple):
        return f"<a list of {len(v)} items>"
    if isinstance(v, str) and len(v) > 200:
        return v[:200] + "..."
    return v


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class _FieldRule:
    """The rules of one input field, in scalar and columnar form."""

    def __init__(self, spec: InputField) -> None:
        self.spec = spec
        self.name = spec.name
        self.type = spec.type
        self.nullable = spec.nullable
        self.lo = spec.min
        self.hi = spec.max
        self.allowed: frozenset[Any] | None = None
        self._allowed_types: frozenset[type] = frozenset()
        if spec.values is not None:
            self.allowed = frozenset(spec.values)
            self._allowed_types = frozenset(type(v) for v in spec.values)
        self.numeric = self.type in ("int", "float")

    # -- one value ---------------------------------------------------------------------------

    def type_ok(self, v: Any) -> bool:
        t = type(v)
        if self.type == "float":
            return t is float or t is int
        if self.type == "int":
            return t is int or (t is float and v.is_integer())
        if self.type == "bool":
            return t is bool
        if self.type == "string":
            return t is str
        if self.type == "datetime":
            return is_datetime(v)
        # category: the value's type must be one the declared values use (True is not 1)
        return t in self._allowed_types or (t is int and float in self._allowed_types)

    def check(self, row: int, v: Any) -> Violation | None:
        if v is MISSING:
            return None
        if v is None:
            if self.nullable:
                return None
            return {
                "row": row,
                "field": self.name,
                "rule": "nullable",
                "value": None,
                "expected": "a value (null is not allowed)",
            }
        if not self.type_ok(v):
            return {
                "row": row,
                "field": self.name,
                "rule": "type",
                "value": echo(v),
                "expected": _EXPECTED_TYPE[self.type],
            }
        if self.numeric:
            if isinstance(v, float) and not math.isfinite(v):
                return {
                    "row": row,
                    "field": self.name,
                    "rule": "type",
                    "value": str(v),
                    "expected": "a finite number",
                }
            if self.lo is not None and v < self.lo:
                return {
                    "row": row,
                    "field": self.name,
                    "rule": "min",
                    "value": v,
                    "expected": f">= {_fmt(self.lo)}",
                }
            if self.hi is not None and v > self.hi:
                return {
                    "row": row,
                    "field": self.name,
                    "rule": "max",
                    "value": v,
                    "expected": f"<= {_fmt(self.hi)}",
                }
        elif self.allowed is not None and v not in self.allowed:
            if self.spec.on_unseen != "reject":
                return None  # answered; counted by the caller when on_unseen is warn
            return {
                "row": row,
                "field": self.name,
                "rule": "category",
                "value": echo(v),
                "expected": f"one of {sorted(self.allowed, key=str)}",
            }
        return None

    # -- a column of Python values (request batches) -----------------------------------------

    def check_column(self, col: tuple[Any, ...], rows: list[int], out: list[Violation]) -> None:
        if self.numeric:
            kinds = set(map(type, col))
            if kinds <= {float, int} and (self.type == "float" or kinds == {int}):
                arr = np.fromiter(col, dtype=np.float64, count=len(col))
                bad = ~np.isfinite(arr)
                if self.lo is not None:
                    bad |= arr < self.lo
                if self.hi is not None:
                    bad |= arr > self.hi
                if not bad.any():
                    return
                for i in np.flatnonzero(bad):
                    out.append(self.check(rows[i], col[i]))  # type: ignore[arg-type]
                return
        # Mixed types, nulls, categories or strings: one pass in Python.
        check = self.check
        for r, v in zip(rows, col, strict=True):
            viol = check(r, v)
            if viol is not None:
                out.append(viol)

    # -- an Arrow column (tables) ------------------------------------------------------------

    def bad_mask(self, col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray | None, pa.Array]:
        """A boolean mask of bad rows (None when all are good) and the column, cast."""
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        typ = col.type
        masks: list[Any] = []
        if pa.types.is_dictionary(typ):
            col = col.dictionary_decode()
            typ = col.type
        if self.numeric:
            if pa.types.is_string(typ) or pa.types.is_large_string(typ):
                pattern = r"^\s*[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)\s*$"
                if self.type == "int":
                    pattern = r"^\s*[-+]?\d+\s*$"
                ok = pc.match_substring_regex(col, pattern)
                masks.append(pc.invert(pc.fill_null(ok, True)))
                col = pc.cast(pc.if_else(ok, col, None), pa.float64())
            elif pa.types.is_integer(typ) or pa.types.is_floating(typ):
                if self.type == "int" and pa.types.is_floating(typ):
                    masks.append(pc.fill_null(pc.not_equal(col, pc.floor(col)), False))
            else:
                masks.append(pa.array(np.ones(len(col), dtype=bool)))
            if pa.types.is_floating(col.type):
                masks.append(pc.fill_null(pc.invert(pc.is_finite(col)), False))
            if self.lo is not None:
                masks.append(pc.fill_null(pc.less(col, self.lo), False))
            if self.hi is not None:
                masks.append(pc.fill_null(pc.greater(col, self.hi), False))
        elif self.type == "bool":
            if not pa.types.is_boolean(typ):
                masks.append(pa.array(np.ones(len(col), dtype=bool)))
        elif self.type == "string":
            if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
                masks.append(pa.array(np.ones(len(col), dtype=bool)))
        elif self.type == "datetime":
            values = col.to_pylist()
            masks.append(pa.array([v is not None and not is_datetime(v) for v in values]))
        elif self.spec.on_unseen != "reject":
            pass  # unseen categories are answered
        else:  # category
            value_set = pa.array(sorted(self.allowed or (), key=str))
            try:
                ok = pc.is_in(col, value_set=value_set.cast(typ))
                masks.append(pc.invert(pc.fill_null(ok, True)))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                masks.append(pa.array(np.ones(len(col), dtype=bool)))
        if not self.nullable and col.null_count:
            masks.append(pc.is_null(col))
        if not masks:
            return None, col
        mask = masks[0]
        for m in masks[1:]:
            mask = pc.or_(mask, m)
        if not pc.any(mask).as_py():
            return None, col
        return mask.to_numpy(zero_copy_only=False), col


@dataclass
class RecordsResult:
    """What validating request records found.

    ``values`` holds one list per good row, in contract field order, ready for a model;
    ``good`` the original row indexes of those rows; ``violations`` every problem found.
    """

    values: list[tuple[Any, ...]]
    good: list[int]
    violations: list[Violation] = field(default_factory=list)
    bad_rows: set[int] = field(default_factory=set)
    unseen: dict[str, int] = field(default_factory=dict)
    """Values outside a category field's ``values`` that were answered (``on_unseen: warn``),
    by field."""


@dataclass
class TableResult:
    good: pa.Table
    bad: pa.Table
    reasons: list[list[Violation]]
    """One list of violations per row of ``bad``, in order."""

    @property
    def bad_count(self) -> int:
        return self.bad.num_rows


def _fast_check(rules: list[_FieldRule]) -> Any:
    """A function ``ok(values) -> bool`` that says whether one row passes every rule.

    It is the request path's common case (a single valid row) written out field by field, so
    a 30-field row costs one straight-line function instead of 30 method calls; any ``False``
    sends the row through the detailed checks, which name each violation. The source is built
    from the contract alone: field positions, numeric bounds written with ``repr`` of floats,
    and sets of declared values passed in by name, nothing taken from a request.
    """
    lines = ["def ok(v):"]
    env: dict[str, Any] = {"isfinite": math.isfinite, "is_datetime": is_datetime}
    for i, r in enumerate(rules):
        x = f"v[{i}]"
        test: list[str] = []
        if r.type == "float":
            test.append(f"(type({x}) is float or type({x}) is int)")
        elif r.type == "int":
            test.append(f"type({x}) is int")
        elif r.type == "bool":
            test.append(f"type({x}) is bool")
        elif r.type == "string":
            test.append(f"type({x}) is str")
        elif r.type == "datetime":
            test.append(f"is_datetime({x})")
        if r.numeric:
            if r.lo is not None:
                test.append(f"{float(r.lo)!r} <= {x}")
            if r.hi is not None:
                test.append(f"{x} <= {float(r.hi)!r}")
            if r.type == "float" and (r.lo is None or r.hi is None):
                test.append(f"isfinite({x})")
        if r.allowed is not None:
            env[f"allowed{i}"] = r.allowed
            env[f"types{i}"] = r._allowed_types
            test.append(f"type({x}) in types{i} and {x} in allowed{i}")
        if not test:
            continue
        cond = " and ".join(test)
        if r.nullable:
            cond = f"{x} is None or ({cond})"
        lines.append(f"    if not ({cond}): return False")
    lines.append("    return True")
    exec("\n".join(lines), env)
    return env["ok"]


class Contract:
    """A compiled :class:`ContractSpec`."""

    def __init__(self, spec: ContractSpec) -> None:
        self.spec = spec
        self.rules = [_FieldRule(f) for f in spec.inputs]
        self.names = [f.name for f in spec.inputs]
        self.keyset = frozenset(self.names)
        self.digest = spec.digest()
        self._getter = itemgetter(*self.names)
        self._single = len(self.names) == 1
        self.reject_unknown = spec.unknown_fields == "reject"
        self._row_ok = _fast_check(self.rules)
        self._warn = [
            (i, r.name, r.allowed)
            for i, r in enumerate(self.rules)
            if r.spec.on_unseen == "warn" and r.allowed is not None
        ]

    # -- records -----------------------------------------------------------------------------

    def _extract(self, i: int, rec: Any, out: list[Violation]) -> tuple[Any, ...] | None:
        """The record's values in field order (None if it is not an object at all)."""
        if type(rec) is not dict:
            out.append(
                {
                    "row": i,
                    "field": None,
                    "rule": "not_object",
                    "value": None,
                    "expected": "a JSON object of field: value",
                }
            )
            return None
        keys = rec.keys()
        if keys == self.keyset:
            vals = self._getter(rec)
            return (vals,) if self._single else vals
        if self.reject_unknown:
            for k in sorted(keys - self.keyset):
                out.append(
                    {
                        "row": i,
                        "field": echo(k),
                        "rule": "unknown_field",
                        "value": echo(rec[k]),
                        "expected": "a field named in the contract",
                    }
                )
        for r in self.rules:
            if r.name not in rec and not r.nullable:
                out.append(
                    {
                        "row": i,
                        "field": r.name,
                        "rule": "required",
                        "value": None,
                        "expected": f"a {_EXPECTED_TYPE[r.type]} value",
                    }
                )
        # Values of a row with structural problems are still checked, so that every problem
        # of the row is named at once; absent fields are MISSING (not null) for the checks.
        return tuple(
            rec.get(n, None if r.nullable else MISSING)
            for n, r in zip(self.names, self.rules, strict=True)
        )

    def validate_records(self, records: list[Any]) -> RecordsResult:
        if len(records) == 1:
            rec = records[0]
            if type(rec) is dict and rec.keys() == self.keyset:
                vals = self._getter(rec)
                if self._single:
                    vals = (vals,)
                if self._row_ok(vals):
                    return RecordsResult(values=[vals], good=[0])
        violations: list[Violation] = []
        rows: list[tuple[Any, ...]] = []
        idx: list[int] = []
        for i, rec in enumerate(records):
            vals = self._extract(i, rec, violations)
            if vals is not None:
                rows.append(vals)
                idx.append(i)
        if len(rows) == 1:
            vals = rows[0]
            r0 = idx[0]
            for rule, v in zip(self.rules, vals, strict=True):
                viol = rule.check(r0, v)
                if viol is not None:
                    violations.append(viol)
        elif rows:
            columns = list(zip(*rows, strict=True))
            for rule, col in zip(self.rules, columns, strict=True):
                rule.check_column(col, idx, violations)
        bad = {v["row"] for v in violations}
        if bad:
            keep = [k for k, i in enumerate(idx) if i not in bad]
            rows = [rows[k] for k in keep]
            idx = [idx[k] for k in keep]
            violations.sort(key=lambda v: v["row"])  # stable: per row, structural first
        unseen: dict[str, int] = {}
        for i, name, allowed in self._warn:
            n = sum(1 for r in rows if r[i] is not None and r[i] not in allowed)
            if n:
                unseen[name] = n
        return RecordsResult(
            values=rows, good=idx, violations=violations, bad_rows=bad, unseen=unseen
        )

    # -- tables ------------------------------------------------------------------------------

    def validate_table(self, table: pa.Table) -> TableResult:
        """Split a table into good rows (cast to the contract) and bad rows with reasons."""
        n = table.num_rows
        present = set(table.column_names)
        missing = [r for r in self.rules if r.name not in present]
        unknown = [c for c in table.column_names if c not in self.keyset]
        all_bad: np.ndarray | None = None
        per_field: list[tuple[_FieldRule, np.ndarray]] = []
        columns: dict[str, pa.Array] = {}
        for rule in self.rules:
            if rule.name not in present:
                continue
            mask, col = rule.bad_mask(table.column(rule.name))
            columns[rule.name] = col
            if mask is not None:
                per_field.append((rule, mask))
                all_bad = mask.copy() if all_bad is None else (all_bad | mask)
        if (missing and any(not r.nullable for r in missing)) or (unknown and self.reject_unknown):
            all_bad = np.ones(n, dtype=bool)
        for rule in missing:
            columns[rule.name] = pa.nulls(n, type=_arrow_type(rule.type))
        good_table = pa.table({name: columns[name] for name in self.names})
        if all_bad is None:
            return TableResult(good=good_table, bad=table.slice(0, 0), reasons=[])
        bad_idx = np.flatnonzero(all_bad)
        reasons: list[list[Violation]] = [[] for _ in bad_idx]
        position = {int(r): k for k, r in enumerate(bad_idx)}
        for rule in missing:
            if not rule.nullable:
                for k, r in enumerate(bad_idx):
                    reasons[k].append(
                        {
                            "row": int(r),
                            "field": rule.name,
                            "rule": "required",
                            "value": None,
                            "expected": "a column of that name",
                        }
                    )
        if self.reject_unknown:
            for name in unknown:
                for k, r in enumerate(bad_idx):
                    reasons[k].append(
                        {
                            "row": int(r),
                            "field": name,
                            "rule": "unknown_field",
                            "value": None,
                            "expected": "a field named in the contract",
                        }
                    )
        for rule, mask in per_field:
            rows_bad = np.flatnonzero(mask)
            raw = table.column(rule.name).take(pa.array(rows_bad)).to_pylist()
            for r, v in zip(rows_bad, raw, strict=True):
                viol = _explain(rule, int(r), v)
                reasons[position[int(r)]].append(viol)
        keep = pa.array(~all_bad)
        return TableResult(
            good=good_table.filter(keep),
            bad=table.take(pa.array(bad_idx)),
            reasons=reasons,
        )


def _explain(rule: _FieldRule, row: int, v: Any) -> Violation:
    """Name the rule a table value broke (values arrive as Python objects)."""
    if isinstance(v, str) and rule.numeric:
        try:
            num = float(v) if rule.type == "float" else int(v.strip())
        except ValueError:
            return {
                "row": row,
                "field": rule.name,
                "rule": "type",
                "value": echo(v),
                "expected": _EXPECTED_TYPE[rule.type],
            }
        v = num
    viol = rule.check(row, v)
    if viol is None:  # pragma: no cover - a mask and a scalar check disagreeing is a bug
        viol = {
            "row": row,
            "field": rule.name,
            "rule": "type",
            "value": echo(v),
            "expected": _EXPECTED_TYPE[rule.type],
        }
    return viol


def _arrow_type(t: str) -> pa.DataType:
    return {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}.get(t, pa.string())


__all__ = ["Contract", "RecordsResult", "TableResult", "Violation"]
