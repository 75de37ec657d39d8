"""The contract's compiled single-row check agrees with the rules it stands for: a row it
passes has no violation, and every row it refuses is named, field by field, by the detailed
checks. Property-based: generated contracts and rows, edge values included."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shipway.contract import Contract
from shipway.manifest import ContractSpec, InputField

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["a", "b", "c", "", "1"]),
    st.sampled_from([0.0, 1.0, -1.0, 2.5, 1e308, -0.0, float("nan"), float("inf"), 3]),
)


@st.composite
def contracts(draw: Any) -> ContractSpec:
    fields = []
    for i in range(draw(st.integers(min_value=1, max_value=6))):
        kind = draw(st.sampled_from(["int", "float", "bool", "category", "string"]))
        spec: dict[str, Any] = {"name": f"f{i}", "type": kind, "nullable": draw(st.booleans())}
        if kind in ("int", "float"):
            lo = draw(st.one_of(st.none(), st.integers(min_value=-5, max_value=5)))
            hi = draw(st.one_of(st.none(), st.integers(min_value=6, max_value=20)))
            spec.update(min=lo, max=hi)
        if kind == "category":
            spec["values"] = draw(
                st.sampled_from([["a", "b"], [1, 2, 3], [0.0, 1.0], ["1", "c"], [True, False]])
            )
        fields.append(InputField(**spec))
    return ContractSpec(inputs=fields)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), spec=contracts())
def test_the_fast_check_never_passes_a_row_the_rules_refuse(data: Any, spec: ContractSpec) -> None:
    c = Contract(spec)
    row = {f.name: data.draw(_values) for f in spec.inputs}
    vals = tuple(row[n] for n in c.names)
    detailed = [v for r, x in zip(c.rules, vals, strict=True) if (v := r.check(0, x))]
    if c._row_ok(vals):
        assert detailed == [], (row, detailed)
    result = c.validate_records([row])
    assert result.violations == detailed
    if not detailed:
        assert result.values == [vals] and result.good == [0]


def test_edge_values_of_floats() -> None:
    for lo, hi in ((None, None), (0, None), (None, 1)):
        c = Contract(ContractSpec(inputs=[InputField(name="x", type="float", min=lo, max=hi)]))
        for value in (math.nan, math.inf, -math.inf):
            assert c.validate_records([{"x": value}]).violations, (lo, hi, value)
    c = Contract(ContractSpec(inputs=[InputField(name="x", type="float", min=0, max=1)]))
    for value, ok in [
        (0, True),
        (1.0, True),
        (0.5, True),
        (-1e-12, False),
        (math.nan, False),
        (math.inf, False),
        (True, False),
        ("0.5", False),
        (None, False),
    ]:
        res = c.validate_records([{"x": value}])
        assert (res.violations == []) is ok, (value, res.violations)
