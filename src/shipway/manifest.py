"""The manifest: ``shipway.yaml``, one service's whole definition.

The models here are the single source of truth for the file format; ``docs/manifest.md`` is
generated from them (``python -m shipway.docs``). Loading validates the file and reports every
problem as ``FILE:LINE: field.path: rule``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import core_schema

from shipway.errors import InputError, ManifestError

MANIFEST_FILENAME = "shipway.yaml"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90d', '12h', '30m', '45s', '2w' → seconds (InputError otherwise)."""
    m = _DURATION.match(text)
    if m is None:
        raise InputError(f"{text!r} is not a duration like 90d, 12h, 30m or 45s")
    return float(m.group(1)) * _UNITS[m.group(2)]


class Duration(str):
    """A length of time as written in a manifest ('90d', '15m'), checked once at load, with its
    length in seconds (``.seconds``). It prints and dumps as written."""

    seconds: float

    def __new__(cls, text: str) -> Duration:
        seconds = parse_duration(text)  # InputError when it is not a duration
        obj = super().__new__(cls, text)
        obj.seconds = seconds
        return obj

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: Any) -> Any:
        return core_schema.no_info_after_validator_function(
            _duration,
            core_schema.str_schema(),
            serialization=core_schema.to_string_ser_schema(),
        )


def _duration(text: str) -> Duration:
    try:
        return Duration(text)
    except InputError as exc:
        raise ValueError(exc.message) from None


def _expression(text: str) -> str:
    from shipway.expr import Expression, ExpressionError

    try:
        Expression(text)
    except ExpressionError as exc:
        raise ValueError(exc.message) from None
    return text


#: A condition in Shipway's expression language, parsed (and refused) at load.
Condition = Annotated[str, AfterValidator(_expression)]

FieldType = Literal["int", "float", "bool", "category", "string", "datetime"]
#: What a field is for: a model input (drift-tested), an identifier (logged, a canary key and a
#: join key for labels, never drift-tested) or metadata (logged, never drift-tested). Ids and
#: metadata reach the model only when it names them (a scikit-learn model fitted on a frame
#: that held them).
FieldRole = Literal["feature", "id", "metadata"]
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
    type: FieldType = Field(
        ...,
        description="int, float, bool, category, string, or datetime (ISO 8601 text, such "
        "as 2026-01-31 or 2026-01-31T12:00:00Z).",
    )
    role: FieldRole = Field(
        "feature",
        description=(
            "feature (a model input, drift-tested), id (logged; a canary key and the key that "
            "labels can be joined on; never drift-tested) or metadata (logged; never "
            "drift-tested). Ids and metadata reach the model only when it names them."
        ),
    )
    on_unseen: Literal["reject", "allow", "warn"] = Field(
        "reject",
        description=(
            "category fields: a value outside `values` is refused (reject, 422), answered "
            "(allow), or answered and counted in /metrics and the monitor (warn), for models "
            "that handle unseen categories."
        ),
    )
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
        if self.type != "category" and self.on_unseen != "reject":
            raise ValueError(f"on_unseen applies to category fields, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


#: Input field settings younger than the contract digest, with their defaults.
_LATER_FIELD_DEFAULTS = {"role": "feature", "on_unseen": "reject"}


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
        """sha256 of the canonical contract, used to tie model versions to a contract.

        Settings added after a contract format was first stored are left out at their default,
        so a contract written before them keeps its digest."""
        spec = self.model_dump(mode="json")
        for f in spec["inputs"]:
            for name, default in _LATER_FIELD_DEFAULTS.items():
                if f.get(name) == default:
                    del f[name]
        canon = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    @property
    def key_field(self) -> str | None:
        """The first ``role: id`` field: its value is the key labels can be joined on."""
        return next((f.name for f in self.inputs if f.role == "id"), None)


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


class SliceSpec(_Model):
    """A named part of the holdout, chosen by an expression over ``inputs.FIELD``."""

    name: str = Field(..., description="Its name in gate results.")
    when: Condition = Field(..., description="Expression, e.g. \"inputs.purpose == 'business'\".")


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
    on_missing_metric: Literal["note", "fail"] = Field(
        "note",
        description=(
            "A version that cannot produce a gate metric (roc_auc and log_loss need class "
            "probabilities): 'note' says so in the gate result and compares it with the champion "
            "on the metrics both produce; 'fail' fails its gate."
        ),
    )
    slices: list[SliceSpec] = Field(
        default_factory=list,
        description="Parts of the data a retrained candidate must not do worse on than the "
        "champion (by not_worse_than_champion_by), each checked on its own.",
    )


class TrainingSpec(_Model):
    """Retraining: a candidate fitted on recent labelled decisions (and train datasets), gated
    against the champion on the most recent part of the window, then promoted as ``promote``
    says."""

    fit: str = Field(
        "clone",
        description="clone: refit a clone of the champion's scikit-learn estimator (same "
        "pipeline and hyper-parameters). Or python:module:function, called with the training "
        "frame and the contract, returning a fitted model.",
    )
    last: Duration | None = Field(
        Duration("90d"), description="The window: labelled decisions logged this recently."
    )
    max_rows: int | None = Field(
        None, ge=1, description="At most this many labelled decisions, the newest."
    )
    datasets: list[str] = Field(
        default_factory=list,
        description="train sources whose dataset versions join the window (their label column "
        "is the target).",
    )
    include_pilot_data: bool = Field(
        False,
        description="Also train on the pilot's data (kept with the first version), as the "
        "oldest rows of the window: never part of the time holdout.",
    )
    recency_half_life: Duration | None = Field(
        None,
        description="Weight rows by age: a row this old counts half as much as a new one "
        "(the estimator must take sample_weight).",
    )
    holdout: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="The most recent share of the window, never trained on, on which the "
        "candidate and the champion are compared.",
    )
    min_labels: int = Field(50, ge=2, description="Fewer labelled rows refuse the run.")
    seed: int = Field(0, description="Random seed given to the estimator (random_state).")
    promote: Literal["manual", "shadow", "canary"] = Field(
        "manual",
        description="A candidate that passes its gate: manual (registered only), shadow, or "
        "canary (then the rollout's steps; automatic with rollout.auto).",
    )
    interval: Duration | None = Field(
        None, description="shipway serve retrains this often (unset: on demand and by alerts)."
    )
    schedule: str | None = Field(None, description="Or a cron expression (UTC).")

    @model_validator(mode="after")
    def _when(self) -> TrainingSpec:
        if self.schedule is not None:
            from croniter import croniter

            if self.interval is not None:
                raise ValueError("give training an interval or a schedule, not both")
            if not croniter.is_valid(self.schedule):
                raise ValueError(f"schedule {self.schedule!r} is not a cron expression")
        if self.fit != "clone" and not self.fit.startswith("python:"):
            raise ValueError("fit is clone or python:module:function")
        return self


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


class BatchingSpec(_Model):
    """Micro-batching: concurrent requests for one model are scored in one model call."""

    enabled: bool = Field(True, description="Gather concurrent requests into one model call.")
    max_batch: int = Field(256, ge=1, le=100_000, description="Rows per model call at most.")
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=100,
        description=(
            "How long a batch may wait for more requests once several are arriving together; "
            "a lone request never waits."
        ),
    )


class RateLimitSpec(_Model):
    """A token bucket per caller key: a steady rate and a burst."""

    per_second: float = Field(..., gt=0, description="Requests per second one key may make.")
    burst: int = Field(..., ge=1, description="Requests one key may make at once.")
    key: str = Field(
        "principal",
        description=(
            "Who a caller is for this limit: 'principal' (the API key or token subject; the "
            "client address in development mode), 'client' (the client address), or "
            "'header:NAME' (a request header such as a tenant id; a request without it is "
            "refused with 400)."
        ),
    )

    @model_validator(mode="after")
    def _key_form(self) -> RateLimitSpec:
        if self.key not in ("principal", "client") and not (
            self.key.startswith("header:") and self.key.split(":", 1)[1].strip()
        ):
            raise ValueError("key must be 'principal', 'client' or 'header:NAME'")
        return self


class LimitsSpec(_Model):
    """What callers may ask of the service before it refuses (429) or sheds load (503)."""

    rate: RateLimitSpec | list[RateLimitSpec] | None = Field(
        None,
        description=(
            "Rate limit (off if unset), or a list of limits each with its own key and rate "
            "(e.g. per principal and per tenant): a request must fit every one."
        ),
    )
    max_in_flight: int = Field(
        512,
        ge=1,
        description=(
            "Requests carrying rows in progress at most; beyond it requests are shed with 503 "
            "and Retry-After instead of queueing without bound."
        ),
    )

    @property
    def rates(self) -> list[RateLimitSpec]:
        if self.rate is None:
            return []
        return self.rate if isinstance(self.rate, list) else [self.rate]


class CacheSpec(_Model):
    """A response cache keyed on the validated inputs and the model version."""

    ttl_s: float = Field(0.0, ge=0, description="Seconds an answer may be reused (0: off).")
    max_entries: int = Field(10_000, ge=1, description="Answers kept at most (LRU).")


class ServingSpec(_Model):
    """Limits of the predict path and the decision log's durability."""

    max_batch_rows: int = Field(
        1000, ge=1, description="Largest batch one predict (or V2 infer) request may carry."
    )
    max_feedback_rows: int = Field(
        10_000, ge=1, description="Most labels one feedback request may carry."
    )
    max_ingest_rows: int = Field(
        100_000, ge=1, description="Most rows one push to POST /v1/ingest/SOURCE may carry."
    )
    max_body_bytes: int = Field(
        10_000_000, ge=1024, description="Largest request body on every route that carries rows."
    )
    decision_log: DecisionLogSpec = Field(
        default_factory=DecisionLogSpec, description="Durability and group-commit size."
    )
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="Micro-batching.")
    limits: LimitsSpec = Field(default_factory=LimitsSpec, description="Rate and load limits.")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Response cache.")
    return_probabilities: bool = Field(
        False,
        description=(
            "Answer every classification row with its class probabilities "
            '(`"probabilities": {label: p}`), as if each request asked with '
            '`"return": ["probabilities"]`.'
        ),
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


class BreakerSpec(_Model):
    """A circuit breaker: stop calling a failing model for a while."""

    failures: int = Field(
        5, ge=0, description="Failures within the window that open the breaker (0: no breaker)."
    )
    window_s: float = Field(30.0, gt=0, description="The window failures are counted over.")
    cooldown_s: float = Field(
        15.0, gt=0, description="How long it stays open before one trial call (half-open)."
    )
    count_invalid: bool = Field(
        False,
        description=(
            "Count a call whose answers fail the output checks as a failure. By default only "
            "outages count (timeouts, connection errors, HTTP 5xx and 429, model exceptions): "
            "an answer outside the labels falls back for its row, and is counted in "
            "invalid_answer_rate, but the model keeps being called."
        ),
    )


class OutputCheckSpec(_Model):
    """Checks on every model answer; an answer that fails them counts as a model failure.

    Classification answers must be one of ``output.labels`` and confidences within [0, 1]
    always; these add bounds for regression and a JSON Schema for structured answers.
    """

    min: float | None = Field(None, description="Smallest allowed answer (regression).")
    max: float | None = Field(None, description="Largest allowed answer (regression).")
    json_schema: dict[str, Any] | None = Field(
        None, description="A JSON Schema each answer must satisfy (structured answers)."
    )


class FallbackStep(_Model):
    """One step of the fallback chain: exactly one of model, version, cache or default."""

    name: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$",
        description="Route name suffix for model steps: the decision's route is fallback:NAME.",
    )
    model: str | None = Field(
        None, description="Another predictor: python:module:function (rules, a simpler model)."
    )
    version: int | None = Field(None, ge=1, description="Another registered version.")
    cache: bool | None = Field(
        None, description="The last good answer given for the same inputs (route: cache)."
    )
    max_age_s: float = Field(
        3600.0, gt=0, description="Cache step: how old a remembered answer may be."
    )
    default: dict[str, Any] | None = Field(
        None,
        description="A declared answer {output, confidence} (route: default); checked too.",
    )
    timeout_ms: float | None = Field(
        None, gt=0, description="Model and version steps: their own timeout (else guards')."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> FallbackStep:
        kinds = [k for k in ("model", "version", "cache", "default") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("a fallback step needs exactly one of model, version, cache, default")
        if self.default is not None and "output" not in self.default:
            raise ValueError("a default answer needs an 'output'")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("model", "version", "cache", "default") if getattr(self, k))

    @property
    def route(self) -> str:
        if self.kind == "cache":
            return "cache"
        if self.kind == "default":
            return "default"
        if self.name:
            return f"fallback:{self.name}"
        if self.version is not None:
            return f"fallback:v{self.version}"
        return "fallback:" + str(self.model).rsplit(":", 1)[-1][:40]


class GuardsSpec(_Model):
    """How a model call is protected, in this order: timeout, retry, circuit breaker, output
    checks, then the fallback chain. Applies to whichever version answers (champion, canary).
    """

    timeout_ms: float = Field(
        2000.0, gt=0, description="Longest wait for one model call (per attempt)."
    )
    retries: int = Field(
        0,
        ge=0,
        le=10,
        description=(
            "Extra attempts for errors that are safe to retry (timeouts, connection errors, "
            "429 and 5xx from a model endpoint); a model that raises is not retried."
        ),
    )
    backoff_ms: float = Field(
        25.0, ge=0, description="Retry k waits a random time up to backoff_ms * 2**k."
    )
    backoff_max_ms: float = Field(1000.0, ge=0, description="Cap on one retry wait.")
    breaker: BreakerSpec = Field(default_factory=BreakerSpec, description="Circuit breaker.")
    output: OutputCheckSpec = Field(
        default_factory=OutputCheckSpec, description="Checks on every answer."
    )
    fallback: list[FallbackStep] = Field(
        default_factory=list,
        description=(
            "Tried in order when the model fails; if every step fails the caller gets a 503 "
            "with the reasons. Never an answer the manifest did not declare."
        ),
    )


class EndpointSpec(_Model):
    """How to call a model served over HTTP (versions whose uri is http:// or https://)."""

    kind: Literal["json", "chat"] = Field(
        "json",
        description="'json': a JSON model server; 'chat': an OpenAI-compatible chat endpoint.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra request headers; a value 'env:NAME' is read from the environment.",
    )
    batch: bool = Field(True, description="json: send all rows of a call in one request.")
    request_format: Literal["records", "values"] = Field(
        "records",
        description="json: rows as objects (records) or as lists in contract order (values).",
    )
    request_key: str = Field("instances", description="json: body key holding the rows.")
    response_key: str = Field(
        "predictions", description="json: response key holding one answer per row."
    )
    output_field: str = Field(
        "output", description="Field of an answer object holding the answer (json and chat)."
    )
    confidence_field: str = Field(
        "confidence", description="Field of an answer object holding the confidence."
    )
    model: str = Field("default", description="chat: the model name sent to the endpoint.")
    system: str = Field("", description="chat: the system message.")
    prompt: str = Field(
        "",
        description=(
            "chat: the user message, with {field} placeholders filled from the validated inputs "
            "(other braces, as in a JSON example, are kept as written; {{ and }} are literal "
            "braces)."
        ),
    )
    answer: Literal["json", "label", "regex"] = Field(
        "json",
        description=(
            "chat: how the answer text is read. 'json': an object holding output_field (and "
            "confidence_field) or a bare JSON value; 'label': the text matched to output.labels "
            "(exact, then ignoring case and punctuation, then the first label word in it); "
            "'regex': answer_pattern's named group 'output' (and 'confidence')."
        ),
    )
    answer_pattern: str | None = Field(
        None, description="chat, answer: regex: a regular expression with a group (?P<output>...)."
    )
    response_format: Literal["auto", "json_object", "none"] = Field(
        "auto",
        description=(
            "chat: the response_format sent. 'auto': json_object when answer is json, nothing "
            "otherwise; 'none': never sent (for servers that refuse it)."
        ),
    )
    request: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "chat: extra fields of every request body (stop, seed, top_p, ...); they cannot "
            "replace model or messages."
        ),
    )
    temperature: float = Field(0.0, ge=0, le=2, description="chat: sampling temperature.")
    max_tokens: int = Field(256, ge=1, description="chat: longest answer in tokens.")
    prompt_price_per_1k: float = Field(0.0, ge=0, description="Cost per 1,000 prompt tokens.")
    completion_price_per_1k: float = Field(
        0.0, ge=0, description="Cost per 1,000 completion tokens."
    )
    max_connections: int = Field(64, ge=1, description="Pooled connections to the endpoint.")

    @model_validator(mode="after")
    def _chat_has_prompt(self) -> EndpointSpec:
        if self.kind == "chat" and not self.prompt:
            raise ValueError("a chat endpoint needs a prompt")
        if self.answer == "regex":
            if not self.answer_pattern:
                raise ValueError("answer: regex needs answer_pattern")
            try:
                rx = re.compile(self.answer_pattern)
            except re.error as exc:
                raise ValueError(f"answer_pattern is not a regular expression: {exc}") from None
            if "output" not in rx.groupindex:
                raise ValueError("answer_pattern needs a named group (?P<output>...)")
        clash = sorted({"model", "messages"} & set(self.request))
        if clash:
            raise ValueError(f"endpoint.request cannot set {clash}: they come from the endpoint")
        return self


class OidcSpec(_Model):
    """Bearer tokens (JWT) from an OpenID Connect provider."""

    issuer: str = Field(..., description="The token issuer (iss) to accept.")
    audience: str = Field(..., description="The audience (aud) tokens must be issued for.")
    jwks: str = Field(
        ...,
        description="The provider's JSON Web Key Set: a file path or an http(s) URL (cached).",
    )
    roles_claim: str = Field(
        "roles",
        description="Claim holding roles (a list or space-separated string; dots for nesting).",
    )
    role_map: dict[str, str] = Field(
        default_factory=dict, description="Claim values → Shipway roles, when names differ."
    )
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256"], description="Accepted signing algorithms."
    )
    leeway_s: float = Field(30.0, ge=0, description="Clock skew allowed on exp and nbf.")
    jwks_refresh: Duration = Field(
        Duration("5m"),
        description=(
            "How often a JWKS URL is fetched again in the background; a key the provider "
            "removed is refused after the next fetch. A token naming an unknown key asks for "
            "a fetch at most every jwks_min_interval. Tokens are never checked over the network."
        ),
    )
    jwks_min_interval: Duration = Field(
        Duration("30s"), description="Fetches of a JWKS URL happen at most this often."
    )
    jwks_timeout_s: float = Field(3.0, gt=0, le=30, description="Timeout of one JWKS fetch.")


class AuthSpec(_Model):
    """Who may call. API keys always work; OIDC tokens when configured. Authentication can be
    off only in development mode (``shipway serve --dev`` or ``SHIPWAY_DEV_MODE=1``)."""

    oidc: OidcSpec | None = Field(None, description="Accept OIDC bearer tokens too.")
    protect_operations: bool = Field(
        False, description="Also require a viewer role on /healthz, /readyz and /metrics."
    )


class StopSpec(_Model):
    """What the service answers while the stop switch is on (``shipway stop``)."""

    behavior: Literal["error", "default", "review"] = Field(
        "error",
        description=(
            "'error': 503 service_stopped; 'default': the declared answer below; 'review': "
            "every request is held for a person (202 and a status URL; queue 'stopped')."
        ),
    )
    answer: dict[str, Any] | None = Field(
        None, description="The declared answer {output, confidence} for 'default'."
    )

    @model_validator(mode="after")
    def _answer_for_default(self) -> StopSpec:
        if self.behavior == "default" and (self.answer is None or "output" not in self.answer):
            raise ValueError("behavior 'default' needs an answer with an 'output'")
        return self


class RetentionSpec(_Model):
    """How long records are kept; a purge inside ``shipway serve`` removes older ones."""

    decisions: Duration | None = Field(
        None, description="Decisions and refused requests, e.g. '400d' (unset: forever)."
    )
    shadow_decisions: Duration | None = Field(None, description="Shadow answers, e.g. '90d'.")
    interval: Duration = Field(
        Duration("1h"), description="How often the purge runs inside shipway serve."
    )


PiiTreatment = Literal["drop", "mask", "hash"]


Action = Literal["notify", "rollback", "pause_canary", "review", "retrain"]

#: Per data source, figures alert rules can name as ``freshness_s.NAME``: seconds since the
#: source last scored a file (or since its first run, if it never has), and files that failed
#: or were held in the window.
SOURCE_FIGURES = ("freshness_s", "ingest_failures")

#: The figures of a monitor window that alert rules are written against. Per input there is
#: also ``drift.FIELD.effect``, ``drift.FIELD.p_adjusted`` and ``drift.FIELD.drifted``.
ALERT_FIGURES = frozenset(
    {
        "n",
        "model_version",
        "request_rate",
        "error_rate",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "fallback_share",
        "invalid_answer_rate",
        "cost",
        "shadow_cost",
        "rejected",
        "rejected_share",
        "drift_share",
        "drifted",
        "drifted_features",
        "prediction_drift",
        "confidence_drift",
        "labeled",
        "reviewed",
        "override_rate",
        "accuracy",
        "f1_macro",
        "roc_auc",
        "mae",
        "rmse",
    }
)
DRIFT_FIGURES = ("effect", "p_adjusted", "drifted")
#: What review policies see of a decision; its inputs are ``inputs.FIELD``.
REVIEW_FIELDS = frozenset({"output", "confidence", "route", "model_version"})


class AlertRule(_Model):
    """An alert: a condition over the monitor's figures, held for some windows, then actions."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Rule name.")
    when: Condition = Field(
        ...,
        description=(
            "A condition in Shipway's expression language over the window's figures, e.g. "
            "'drift_share > 0.3' or 'labeled >= 50 and accuracy < 0.85'."
        ),
    )
    for_: int = Field(
        1, ge=1, alias="for", description="Consecutive windows the condition must hold."
    )
    do: list[Action] = Field(
        default_factory=lambda: ["notify"],  # type: ignore[arg-type]
        description="notify, rollback, pause_canary, review, retrain.",
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class WebhookSpec(_Model):
    """Where notifications go: a JSON POST, retried with backoff, every attempt recorded."""

    url: str = Field(..., description="http(s) URL.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers; 'env:NAME' reads the environment."
    )
    timeout_s: float = Field(5.0, gt=0, description="Per attempt.")
    attempts: int = Field(4, ge=1, le=10, description="Attempts before giving up.")


class MonitorSpec(_Model):
    """Drift, performance and operations over windows of decisions; alert rules."""

    window: Duration = Field(Duration("1h"), description="Tumbling window length (e.g. 1h, 15m).")
    window_rows: int | None = Field(
        None, ge=10, description="Instead of time: the last N decisions form a window."
    )
    interval: Duration = Field(
        Duration("5m"), description="How often shipway serve runs the monitor."
    )
    schedule: bool = Field(True, description="Run inside shipway serve on the interval.")
    min_rows: int = Field(
        100, ge=1, description="Fewer decisions than this: drift is not tested in a window."
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="Significance after Benjamini-Hochberg correction."
    )
    floors: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Effect-size floor per feature (Wasserstein/std for numbers, default 0.1; "
            "Jensen-Shannon for categories, default 0.05)."
        ),
    )
    calibrate_floors: bool = Field(
        False, description="Raise floors to what chunks of the reference show among themselves."
    )
    alerts: list[AlertRule] = Field(default_factory=list, description="Alert rules.")
    webhooks: list[WebhookSpec] = Field(default_factory=list, description="Notify targets.")


class ReviewPolicy(_Model):
    """Which decisions people check: a condition, or a random sample, or both."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Policy name.")
    when: Condition | None = Field(
        None,
        description=(
            "A condition over the decision: confidence, output, route, model_version and "
            "inputs.FIELD, e.g. 'confidence < 0.7' or \"inputs.amount > 50000\"."
        ),
    )
    sample: float | None = Field(
        None, gt=0, le=1, description="Also (or only) a random share of decisions (QA)."
    )
    mode: Literal["respond_then_review", "hold"] = Field(
        "respond_then_review",
        description=(
            "respond_then_review: the caller gets the model's answer, flagged; hold: the "
            "caller gets 202 and the reviewer's answer is the final one."
        ),
    )
    priority: int = Field(0, description="Higher is reviewed first.")
    queue: str = Field("default", description="Queue name (SLAs are per queue).")
    reviews: int = Field(1, ge=1, le=3, description="Reviewers needed (2: double review).")

    @model_validator(mode="after")
    def _something_to_match(self) -> ReviewPolicy:
        if self.when is None and self.sample is None:
            raise ValueError("a review policy needs 'when', 'sample' or both")
        return self


class ReviewQueueSpec(_Model):
    sla: Duration = Field(
        Duration("24h"), description="Time from creation to decision before escalation."
    )


class ReviewSpec(_Model):
    """Human review: policies evaluated on every decision, queues with SLAs."""

    policies: list[ReviewPolicy] = Field(default_factory=list, description="Review policies.")
    queues: dict[str, ReviewQueueSpec] = Field(
        default_factory=dict, description="Per queue: the SLA (default 24h)."
    )
    claim_ttl: Duration = Field(
        Duration("15m"), description="A claim not finished in this time expires."
    )
    webhook: str | None = Field(
        None, description="Called (POST) when a held decision gets its final answer."
    )


class AuditSpec(_Model):
    """Signed checkpoints of the audit chain, kept outside the database, so that events deleted
    from the end of the chain (with its head moved back) are found by ``shipway audit verify``."""

    checkpoint_every: Duration = Field(
        Duration("1h"), description="How often shipway serve writes a signed checkpoint."
    )
    checkpoint_dir: str = Field(
        "audit-checkpoints",
        description=(
            "Folder for checkpoint files, relative to the manifest (put it on other storage "
            "than the database for the check to mean something)."
        ),
    )
    checkpoint_webhook: WebhookSpec | None = Field(
        None, description="Also send each checkpoint here (through the outbox)."
    )


class SinkSpec(_Model):
    """Where a scoring source writes its answers: a folder (one file per batch, written whole)
    or a SQL table (each batch's rows in one transaction)."""

    path: str | None = Field(None, description="A folder (relative to the manifest's folder).")
    format: Literal["parquet", "csv"] = Field("parquet", description="Folder: parquet or csv.")
    table: str | None = Field(
        None, description="Or a SQL table (created when missing), in the database at url."
    )
    url: str | None = Field(
        None, description="Table: a SQLAlchemy URL; 'env:NAME' reads it from the environment."
    )

    @model_validator(mode="after")
    def _one_place(self) -> SinkSpec:
        if (self.path is None) == (self.table is None):
            raise ValueError("a sink is a folder (path) or a SQL table (table and url)")
        if self.table is not None and not self.url:
            raise ValueError("a table sink needs the url of its database")
        if self.table is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", self.table):
            raise ValueError(f"sink table {self.table!r}: letters, digits and _ only")
        return self

    def database_url(self) -> str:
        url = self.url or ""
        if url.startswith("env:"):
            value = os.environ.get(url[4:])
            if not value:
                raise ValueError(f"the sink's url reads ${url[4:]}, which is not set")
            return value
        return url


class BadShareSpec(_Model):
    """How many bad rows a batch may carry. Bad rows are always quarantined with reasons."""

    warn: float = Field(0.01, ge=0, le=1, description="Above this share the run says so.")
    fail: float = Field(
        0.5, ge=0, le=1, description="Above this share the batch is held whole: nothing scored."
    )


class SchemaPolicySpec(_Model):
    """What a batch whose columns differ from the contract does. Every difference is recorded
    with the batch (``shipway sources status``); none is ever reported as drift."""

    new_columns: Literal["ignore", "reject"] = Field(
        "ignore", description="A column the contract does not have: ignore it, or hold the batch."
    )
    missing_columns: Literal["reject", "allow"] = Field(
        "reject",
        description="A contract field the batch lacks: hold the batch, or allow it (the field "
        "is null, and the contract's nullability decides each row).",
    )
    type_changes: Literal["reject", "coerce"] = Field(
        "reject",
        description="A column of another type (text where numbers were): hold the batch, or "
        "coerce (each value that does not read as the field's type is a bad row).",
    )
    map: dict[str, str] = Field(
        default_factory=dict,
        description="Renamed columns, old name to contract name (applied before the checks).",
    )


class LabelColumnsSpec(_Model):
    """Which columns of a ``use: labels`` source carry what."""

    label: str = Field("label", description="The column holding the ground truth.")
    decision_id: str | None = Field(
        None, description="The column holding decision ids (or use key)."
    )
    key: str | None = Field(
        None,
        description="The column holding the contract's role: id value; each label joins the "
        "newest answered decision carrying it.",
    )
    within: Duration = Field(
        Duration("30d"), description="How far back a key looks for its decision."
    )


#: What each source kind needs, and what it may not have.
_KIND_NEEDS = {
    "files": ("path",),
    "sql": ("url", "query", "cursor", "key"),
    "push": (),
    "stream": ("url", "subject"),
}


class SourceSpec(_Model):
    """A source of rows (files, a SQL query, or HTTP push), validated before anything uses
    them: scored (batch scoring), kept as dataset versions (train), or joined as labels."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Source name.")
    use: Literal["score", "train", "labels"] = Field(
        "score",
        description="score: every good row is answered by the current plan (champion, canary, "
        "shadows, guards and fallbacks as online) and logged as a decision (caller "
        "source:NAME); answers go to the sink. train: good rows become immutable dataset "
        "versions (shipway datasets). labels: rows are ground truth joined to decisions.",
    )
    kind: Literal["files", "sql", "push", "stream"] = Field(
        "files",
        description="files: a glob of CSV, Parquet or JSONL. sql: a query read incrementally by "
        "a cursor column. push: POST /v1/ingest/NAME (JSON records, CSV or Parquet body). "
        "stream: NATS JetStream messages of JSON records (the nats extra).",
    )
    path: str | None = Field(
        None, description="files: a glob, relative to the manifest's folder (incoming/*.csv)."
    )
    format: Literal["auto", "csv", "parquet", "jsonl"] = Field(
        "auto", description="auto: by the file's extension (.csv, .parquet, .jsonl/.ndjson)."
    )
    settle_s: float = Field(
        2.0,
        ge=0,
        description="A file changed more recently than this is left for the next run (it may "
        "still be being written).",
    )
    url: str | None = Field(
        None,
        description="sql: a SQLAlchemy URL; stream: a NATS URL (nats://host:4222). 'env:NAME' "
        "reads it from the environment (keep passwords out of the manifest).",
    )
    subject: str | None = Field(None, description="stream: the subject to read.")
    stream: str | None = Field(
        None, description="stream: the JetStream stream holding the subject (default: found)."
    )
    durable: str | None = Field(
        None, description="stream: the durable consumer's name (default shipway-SOURCE)."
    )
    ack_wait: Duration = Field(
        Duration("30s"),
        description="stream: how long a fetched message waits for its acknowledgement before "
        "it is delivered again (a run killed mid-batch).",
    )
    query: str | None = Field(
        None,
        description="sql: a SELECT (a table name alone means every column of it); read in "
        "cursor order, only rows past the last batch taken.",
    )
    cursor: str | None = Field(
        None, description="sql: a column that grows with new rows (a time or a sequence)."
    )
    key: str | None = Field(
        None,
        description="sql: a column unique per row; rows sharing the last cursor value are told "
        "apart by it, so none is taken twice or skipped.",
    )
    fetch_rows: int = Field(
        50_000,
        ge=1,
        le=5_000_000,
        description="sql: rows per batch; stream: messages per batch (one claim, one commit).",
    )
    interval: Duration | None = Field(
        None, description="shipway serve runs the source this often (unset: only on demand)."
    )
    schedule: str | None = Field(
        None,
        description="Or a cron expression, in UTC ('0 2 * * *': at 02:00 every day), for "
        "shipway serve to run the source at.",
    )
    retry_after: Duration | None = Field(
        Duration("10s"),
        description="A run that fails (an unreachable database or stream) is tried again after "
        "this, then twice as long on each failure in a row, up to the interval.",
    )
    sink: SinkSpec | None = Field(
        None,
        description="use score: where answers are written (needed for files and sql; a push "
        "is answered in its reply).",
    )
    schema_changes: SchemaPolicySpec = Field(
        default_factory=SchemaPolicySpec,
        description="What a batch whose columns differ from the contract does.",
    )
    labels: LabelColumnsSpec | None = Field(
        None, description="use labels: which columns hold the label and the decision id or key."
    )
    label: str | None = Field(
        None, description="use train: a column kept with each dataset version (the target)."
    )
    keep_inputs: bool = Field(
        False,
        description="use score: also keep each batch's good rows as a dataset version "
        "(shipway datasets), so what was scored can be read back as it was.",
    )
    max_bad_share: BadShareSpec = Field(
        default_factory=BadShareSpec, description="Bad-row shares that warn and that hold."
    )
    batch_rows: int = Field(4096, ge=1, le=65536, description="Rows per scoring call (use score).")
    warn_after: Duration | None = Field(
        None,
        description="Freshness: with no batch taken for this long the source reads 'warn' "
        "(figure freshness_s.NAME for alert rules).",
    )
    error_after: Duration | None = Field(
        None, description="Freshness: with no batch taken for this long it reads 'error'."
    )

    @model_validator(mode="after")
    def _fits_kind(self) -> SourceSpec:
        if self.schedule is not None:
            from croniter import croniter

            if self.interval is not None:
                raise ValueError("give a source an interval or a schedule, not both")
            if not croniter.is_valid(self.schedule):
                raise ValueError(
                    f"schedule {self.schedule!r} is not a cron expression (minute hour day "
                    "month weekday, e.g. '0 2 * * *')"
                )
        absent = [k for k in _KIND_NEEDS[self.kind] if not getattr(self, k)]
        if absent:
            raise ValueError(f"a {self.kind} source needs {', '.join(absent)}")
        for k in ("stream", "durable"):
            if getattr(self, k) and self.kind != "stream":
                raise ValueError(f"{k} belongs to stream sources, not {self.kind} ones")
        for kind, needs in _KIND_NEEDS.items():
            if kind != self.kind:
                extra = [k for k in needs if getattr(self, k) and k not in _KIND_NEEDS[self.kind]]
                if extra:
                    raise ValueError(
                        f"{', '.join(extra)} belong to {kind} sources, not {self.kind} ones"
                    )
        if self.use == "score" and self.sink is None and self.kind != "push":
            raise ValueError("a score source needs a sink (where its answers are written)")
        if self.use != "score" and self.sink is not None:
            raise ValueError(f"a sink is for score sources; this one's use is {self.use}")
        if self.use == "labels":
            if self.labels is None or not (self.labels.decision_id or self.labels.key):
                raise ValueError(
                    "a labels source needs labels.decision_id or labels.key (how a row finds "
                    "its decision)"
                )
        elif self.labels is not None:
            raise ValueError(f"labels: is for labels sources; this one's use is {self.use}")
        if self.keep_inputs and self.use != "score":
            raise ValueError("keep_inputs is for score sources (a train source keeps all)")
        if self.label is not None and self.use != "train":
            raise ValueError("label: is for train sources (use labels: on a labels source)")
        return self

    def source_url(self) -> str:
        """The SQL URL, read from the environment when written as 'env:NAME'."""
        url = self.url or ""
        if url.startswith("env:"):
            name = url[4:]
            value = os.environ.get(name)
            if not value:
                raise ValueError(f"source {self.name}: url reads ${name}, which is not set")
            return value
        return url


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
    guards: GuardsSpec = Field(
        default_factory=GuardsSpec, description="Timeouts, retries, breaker, fallbacks."
    )
    endpoint: EndpointSpec | None = Field(
        None, description="How to call versions served over HTTP (json or chat)."
    )
    auth: AuthSpec = Field(default_factory=AuthSpec, description="API keys and OIDC tokens.")
    pii: dict[str, PiiTreatment] = Field(
        default_factory=dict,
        description=(
            "Personal input fields and their treatment in the decision log and exports: drop, "
            "mask (all but the last 4 characters), or hash (keyed HMAC, so joins still work)."
        ),
    )
    retention: RetentionSpec = Field(
        default_factory=RetentionSpec, description="How long decisions are kept."
    )
    stop: StopSpec = Field(default_factory=StopSpec, description="Safe behaviour when stopped.")
    audit: AuditSpec = Field(
        default_factory=AuditSpec, description="Signed checkpoints of the audit chain."
    )
    monitor: MonitorSpec = Field(
        default_factory=MonitorSpec, description="Drift, performance, operations, alerts."
    )
    review: ReviewSpec = Field(default_factory=ReviewSpec, description="Human review.")
    training: TrainingSpec | None = Field(
        None, description="Retraining from labelled decisions (shipway retrain)."
    )
    sources: list[SourceSpec] = Field(
        default_factory=list,
        description="Data sources (files, SQL, HTTP push): validated, quarantined, then scored, "
        "kept as datasets or joined as labels.",
    )

    @model_validator(mode="after")
    def _pii_fields_exist(self) -> Manifest:
        names = {f.name for f in self.contract.inputs}
        unknown = sorted(set(self.pii) - names)
        if unknown:
            raise ValueError(f"pii names fields the contract does not have: {unknown}")
        seen: set[str] = set()
        for s in self.sources:
            if s.name in seen:
                raise ValueError(f"two sources are named {s.name!r}")
            seen.add(s.name)
            wrong = sorted(set(s.schema_changes.map.values()) - names)
            if wrong:
                raise ValueError(
                    f"source {s.name}: schema_changes.map renames to {wrong}, which the "
                    "contract does not have"
                )
            if s.labels is not None and s.labels.key and self.contract.key_field is None:
                raise ValueError(
                    f"source {s.name}: labels.key joins on the contract's role: id field, and "
                    "the contract has none (use labels.decision_id)"
                )
        if self.training is not None:
            train = {s.name for s in self.sources if s.use == "train"}
            wrong = sorted(set(self.training.datasets) - train)
            if wrong:
                raise ValueError(
                    f"training.datasets names {wrong}, which are not train sources "
                    f"(train sources: {sorted(train) or 'none'})"
                )
        return self

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


def _unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{name!r} is not a name this condition can use{hint}"


def _name_problems(m: Manifest) -> list[tuple[tuple[Any, ...], str]]:
    """Names in alert rules and review policies that nothing provides (they would never fire)."""
    fields = [f.name for f in m.contract.inputs]
    figures = sorted(ALERT_FIGURES) + [f"drift.{f}.{k}" for f in fields for k in DRIFT_FIGURES]
    figures += [f"{k}.{s.name}" for s in m.sources for k in SOURCE_FIGURES]
    review = sorted(REVIEW_FIELDS) + [f"inputs.{f}" for f in fields]
    out: list[tuple[tuple[Any, ...], str]] = []
    from shipway.expr import Expression

    for i, rule in enumerate(m.monitor.alerts):
        for name in sorted(Expression(rule.when).names):
            if name not in ALERT_FIGURES and name not in figures:
                out.append(
                    (
                        ("monitor", "alerts", i, "when"),
                        _unknown(name, figures) + " (alert rules use the monitor's figures: "
                        "see the manifest reference)",
                    )
                )
    slice_names = [f"inputs.{f}" for f in fields]
    for i, sl in enumerate(m.quality.slices):
        for name in sorted(Expression(sl.when).names):
            if name not in slice_names:
                out.append(
                    (
                        ("quality", "slices", i, "when"),
                        _unknown(name, slice_names) + " (slices use inputs.FIELD)",
                    )
                )
    for i, policy in enumerate(m.review.policies):
        if policy.when is None:
            continue
        for name in sorted(Expression(policy.when).names):
            if name not in review:
                out.append(
                    (
                        ("review", "policies", i, "when"),
                        _unknown(name, review) + " (review policies use output, confidence, "
                        "route, model_version and inputs.FIELD)",
                    )
                )
    return out


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
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems = _describe(exc.errors(), path, root)
    else:
        problems = []
        for loc, msg in _name_problems(manifest):
            line = _line_of(root, loc)
            where = f"{path}:{line}" if line else path
            problems.append(f"{where}: {'.'.join(str(p) for p in loc)}: {msg}")
        if not problems:
            return manifest
    head = problems[0] if len(problems) == 1 else f"{len(problems)} problems, first: {problems[0]}"
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
    "ALERT_FIGURES",
    "DRIFT_FIGURES",
    "MANIFEST_FILENAME",
    "REVIEW_FIELDS",
    "SOURCE_FIGURES",
    "AlertRule",
    "AuditSpec",
    "AuthSpec",
    "BatchingSpec",
    "BreakerSpec",
    "CacheSpec",
    "Condition",
    "ContractSpec",
    "Duration",
    "EndpointSpec",
    "FallbackStep",
    "GuardsSpec",
    "InputField",
    "LimitsSpec",
    "Manifest",
    "ModelRef",
    "MonitorSpec",
    "OidcSpec",
    "OutputCheckSpec",
    "OutputSpec",
    "Owner",
    "QualitySpec",
    "RateLimitSpec",
    "RetentionSpec",
    "ReviewPolicy",
    "ReviewSpec",
    "RolloutSpec",
    "ServiceSpec",
    "ServingSpec",
    "SliceSpec",
    "StopSpec",
    "StorageSpec",
    "Threshold",
    "TrainingSpec",
    "WebhookSpec",
    "dump_manifest",
    "load_manifest",
    "parse_duration",
    "parse_manifest",
]
