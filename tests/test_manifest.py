"""Manifest errors name the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipway.errors import ManifestError
from shipway.manifest import dump_manifest, load_manifest, parse_manifest

GOOD = """\
version: 1
service:
  name: loans
model:
  version: 1
  uri: python:tests.pilots.rules:predict
contract:
  inputs:
  - name: amount
    type: float
    min: 0
    max: 100000
  - name: purpose
    type: category
    values: [car, home]
output:
  kind: classification
  labels: [approve, deny]
"""


def test_a_good_manifest_round_trips() -> None:
    m = parse_manifest(GOOD)
    assert m.contract.inputs[1].values == ["car", "home"]
    again = parse_manifest(dump_manifest(m))
    assert again == m
    assert again.contract.digest() == m.contract.digest()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "    max: 100000",
            "    max: 100000\n    maxx: 3",
            "shipway.yaml:13: contract.inputs.0.maxx: unknown key",
        ),
        (
            "  name: loans",
            "  name: Loans!",
            "shipway.yaml:3: service.name: String should match pattern",
        ),
        (
            "    values: [car, home]",
            "    values: []",
            "shipway.yaml:13: contract.inputs.1: a category field needs",
        ),
        (
            "    min: 0",
            "    min: 200000",
            "shipway.yaml:9: contract.inputs.0: min (200000.0) is greater than max",
        ),
        (
            "  kind: classification",
            "  kind: ranking",
            "shipway.yaml:17: output.kind: Input should be",
        ),
        (
            "  version: 1\n  uri",
            "  version: zero\n  uri",
            "shipway.yaml:5: model.version: Input should be a valid integer",
        ),
        (
            "  labels: [approve, deny]",
            "  labels: [approve, deny]\nquality:\n  on_missing_metric: skip",
            "shipway.yaml:20: quality.on_missing_metric: Input should be 'note' or 'fail'",
        ),
    ],
)
def test_errors_name_file_line_and_field(old: str, new: str, expected: str) -> None:
    text = GOOD.replace(old, new, 1)
    assert text != GOOD
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "shipway.yaml")
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_missing_section_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(
            GOOD.replace("output:\n  kind: classification\n  labels: [approve, deny]\n", "")
        )
    assert any("output: Field required" in p for p in info.value.problems)
    with pytest.raises(ManifestError, match=r"shipway.yaml:4: not valid YAML"):
        parse_manifest("service:\n  name: x\n  bad: [a, b\n  other: 1\n", "shipway.yaml")
    with pytest.raises(ManifestError, match="run 'shipway init' first"):
        load_manifest(tmp_path)
