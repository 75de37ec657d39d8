"""The manifest: ``shipway.yaml``, one service's whole definition.

The models here are the single source of truth for the file format; ``docs/manifest.md`` is
generated from them (``python -m shipway.docs``). Loading validates the file and reports every
problem as ``FILE:LINE: field.path: rule``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shipway.errors import ManifestError

MANIFEST_FILENAME = "shipway.yaml"

FieldType = Literal["int", "float", "bool", "category", "string"]
Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Owner(_Model):
    """Who answers for this service in production."""

    team: str = Field("TODO", description="Owning team.")
    email: str = Field("TODO", description="Contact address for the owning team.")
    oncall: str = Field("TODO", description="Where pages go (rota, channel or person).")


class ServiceSpec(_Model):
    """The service's identity."""

    name: str = Field(
        ...,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
        description="Service name: lowercase letters, digits, '-' and '_'.",
    )
    description: str = Field("", description="One line on what the service decides.")
    owner: Owner = Field(default_factory=Owner, description="Who answers for it.")


class InputField(_Model):
    """One input column of the data contract."""

    name: str = Field(..., min_length=1, description="Field name as callers send it.")
    type: FieldType = Field(..., description="int, float, bool, category or string.")
    nullable: bool = Field(False, description="Whether null (missing value) is allowed.")
    min: float | None = Field(None, description="Smallest allowed value (int and float).")
    max: float | None = Field(None, description="Largest allowed value (int and float).")
    values: list[Scalar] | None = Field(
        None, description="Allowed values (category). Anything else is an unseen category."
    )
    description: str = Field("", description="Free text for people and the OpenAPI schema.")

    @model_validator(mode="after")
    def _rules_fit_type(self) -> InputField:
        numeric = self.type in ("int", "float")
        if not numeric and (self.min is not None or self.max is not None):
            raise ValueError(f"min/max apply to int and float fields, not {self.type}")
        if self.type != "category" and self.values is not None:
            raise ValueError(f"values apply to category fields, not {self.type}")
        if self.type == "category" and not self.values:
            raise ValueError("a category field needs a non-empty list of values")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class ContractSpec(_Model):
    """The data contract every request and every ingested batch must satisfy."""

    inputs: list[InputField] = Field(..., min_length=1)
    unknown_fields: Literal["reject", "ignore"] = Field(
        "reject", description="What to do with fields the contract does not name."
    )
    on_bad_rows: Literal["reject", "partial"] = Field(
        "reject",
        description=(
            "Batch policy: 'reject' refuses a batch with any bad row; 'partial' answers the good "
            "rows and lists the bad ones."
        ),
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ContractSpec:
        seen: set[str] = set()
        for f in self.inputs:
            if f.name in seen:
                raise ValueError(f"input field {f.name!r} is declared twice")
            seen.add(f.name)
        return self

    def digest(self) -> str:
        """sha256 of the canonical contract, used to tie model versions to a contract."""
        canon = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()


class OutputSpec(_Model):
    """What the model answers: a class label or a number."""

    kind: Literal["classification", "regression"]
    labels: list[Scalar] | None = Field(None, description="Class labels (classification).")
    min: float | None = Field(None, description="Smallest observed target (regression).")
    max: float | None = Field(None, description="Largest observed target (regression).")

    @model_validator(mode="after")
    def _labels_for_classification(self) -> OutputSpec:
        if self.kind == "classification" and not self.labels:
            raise ValueError("a classification output needs its labels")
        return self


class ModelRef(_Model):
    """Which registered model version serves as champion."""

    version: int = Field(..., ge=1, description="Registry version number.")
    uri: str = Field(
        ...,
        description="sklearn:sha256:<hex> for a stored artifact, or python:module:function.",
    )
    source: str = Field("", description="Where the pilot came from (informational).")


class Threshold(_Model):
    """A bound on one quality metric."""

    min: float | None = Field(None, description="The metric must be at least this.")
    max: float | None = Field(None, description="The metric must be at most this.")


class QualitySpec(_Model):
    """Quality the service must keep, measured on the holdout at init."""

    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of data held out.")
    not_worse_than_champion_by: float | None = Field(
        None,
        ge=0,
        description=(
            "A new version may trail the champion by at most this much on every threshold "
            "metric (same holdout)."
        ),
    )
    metrics: dict[str, Threshold] = Field(
        default_factory=dict,
        description=(
            "Per metric a min (higher is better) or max (lower is better); init writes the "
            "holdout score less 0.02 (or plus 2% for error metrics)."
        ),
    )


class DecisionLogSpec(_Model):
    """How decisions are committed (every answer is committed before it is sent)."""

    sync: Literal["normal", "full"] = Field(
        "normal",
        description=(
            "SQLite durability: 'normal' survives a killed process (WAL), 'full' also survives "
            "power loss at some throughput cost. PostgreSQL always commits durably."
        ),
    )
    max_batch: int = Field(512, ge=1, le=10000, description="Rows per group commit at most.")


class ServingSpec(_Model):
    """Limits of the predict path and the decision log's durability."""

    max_batch_rows: int = Field(
        1000, ge=1, description="Largest batch one predict request may carry."
    )
    max_body_bytes: int = Field(10_000_000, ge=1024, description="Largest request body.")
    decision_log: DecisionLogSpec = Field(
        default_factory=DecisionLogSpec, description="Durability and group-commit size."
    )


class RolloutSpec(_Model):
    """How new versions reach traffic: shadow, then canary steps, then champion."""

    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        description="Canary traffic shares (percent) that `shipway rollout step` moves through.",
    )
    min_requests: int = Field(
        100, ge=0, description="Canary decisions needed at a step before it may proceed."
    )
    max_error_rate: float = Field(
        0.02, ge=0, le=1, description="Largest share of failed canary calls allowed at a step."
    )
    max_p99_ms: float | None = Field(
        None, gt=0, description="Largest canary p99 latency (ms) allowed at a step."
    )
    min_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Least share of shadow answers equal to the champion's (classification).",
    )
    auto: bool = Field(False, description="Step automatically when a step's checks pass.")
    check_interval_s: float = Field(10.0, gt=0, description="How often automatic steps check.")
    shadow_timeout_ms: float = Field(
        1000.0, gt=0, description="A shadow answer later than this is recorded as timed out."
    )
    shadow_max_pending: int = Field(
        256, ge=1, description="Shadow rows in flight at most; beyond it samples are skipped."
    )

    @model_validator(mode="after")
    def _steps_increase(self) -> RolloutSpec:
        if not self.steps or any(not 0 < s <= 100 for s in self.steps):
            raise ValueError("steps must be percentages in (0, 100]")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError("steps must increase")
        return self


class StorageSpec(_Model):
    """Local state. ``SHIPWAY_DATABASE_URL`` (e.g. PostgreSQL) replaces the SQLite file."""

    path: str = Field(
        ".shipway",
        description="Folder (relative to the manifest) for the SQLite store and artifacts.",
    )


class Manifest(_Model):
    """``shipway.yaml``."""

    version: Literal[1] = Field(1, description="Manifest format version.")
    service: ServiceSpec = Field(..., description="Name, description and owner.")
    model: ModelRef = Field(..., description="The registered model version that answers.")
    contract: ContractSpec = Field(..., description="The inputs every request must satisfy.")
    output: OutputSpec = Field(..., description="What the model answers.")
    quality: QualitySpec = Field(
        default_factory=QualitySpec, description="Quality thresholds from the holdout."
    )
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Request limits, log.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Shadow and canary.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Where state lives.")


# --------------------------------------------------------------------------------------------
# Loading with file:line error reports


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Walk a composed YAML node along a pydantic error location; return a 1-based line."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == part:
                    nxt, line = v, k.start_mark.line + 1
                    break
            if nxt is None:
                return line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _describe(errors: list[Any], path: str, root: yaml.Node | None) -> list[str]:
    problems = []
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        field = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        where = f"{path}:{line}" if line else path
        problems.append(f"{where}: {field}: {msg}")
    return problems


def parse_manifest(text: str, path: str = MANIFEST_FILENAME) -> Manifest:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(
            f"{where}: not valid YAML: {problem}", [f"{where}: {problem}"]
        ) from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the manifest must be a mapping of keys to values")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        problems = _describe(exc.errors(), path, root)
        head = (
            problems[0] if len(problems) == 1 else f"{len(problems)} problems, first: {problems[0]}"
        )
        raise ManifestError(f"{path} is not a valid manifest: {head}", problems) from None


def load_manifest(path: str | Path) -> Manifest:
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_FILENAME
    if not p.exists():
        raise ManifestError(f"no manifest at {p}: run 'shipway init' first or pass its path")
    return parse_manifest(p.read_text(encoding="utf-8"), str(p))


def dump_manifest(manifest: Manifest) -> str:
    data = manifest.model_dump(mode="json", exclude_none=True)
    # Inputs are the bulk of a manifest: keep each to the keys that say something.
    data["contract"]["inputs"] = [
        f.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {"type": f.type}
        for f in manifest.contract.inputs
    ]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


__all__ = [
    "MANIFEST_FILENAME",
    "ContractSpec",
    "InputField",
    "Manifest",
    "ModelRef",
    "OutputSpec",
    "Owner",
    "QualitySpec",
    "RolloutSpec",
    "ServiceSpec",
    "ServingSpec",
    "StorageSpec",
    "Threshold",
    "dump_manifest",
    "load_manifest",
    "parse_manifest",
]
