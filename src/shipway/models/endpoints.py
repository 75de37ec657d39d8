"""Predictors for models served over HTTP: JSON model servers and OpenAI-compatible chat.

Both are asynchronous on the serving path (``apredict``, one pooled ``httpx.AsyncClient`` per
event loop, per-call timeouts, nothing blocks the loop) and synchronous for the CLI's holdout
scoring (``predict``). The manifest's ``endpoint`` section says how rows become requests and
how answers are read back; ``guards.timeout_ms`` bounds every call.

Failures are classified so that the guards can decide: connection errors, timeouts, 429 and
5xx are :class:`UpstreamError` with ``retryable=True``; other 4xx are not retryable; an answer
that is not what was asked for (not JSON, missing fields, wrong count, off-schema) is
:class:`OutputInvalid`.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from shipway.errors import (
    ConfigError,
    InputError,
    ModelTimeout,
    OutputInvalid,
    ShipwayError,
    UpstreamError,
)
from shipway.manifest import EndpointSpec
from shipway.models.predictor import NeedsFields, Predictions, Row, _py


def _headers(spec: EndpointSpec) -> dict[str, str]:
    out = {"content-type": "application/json"}
    for k, v in spec.headers.items():
        if v.startswith("env:"):
            name = v[4:]
            if name not in os.environ:
                raise ConfigError(f"endpoint header {k!r} needs the environment variable {name}")
            v = os.environ[name]
        out[k] = v
    return out


def _classify(exc: Exception, url: str) -> Exception:
    if isinstance(exc, httpx.TimeoutException):
        return ModelTimeout(f"the model endpoint {url} did not answer in time")
    if isinstance(exc, httpx.TransportError):
        return UpstreamError(
            f"the model endpoint {url} is unreachable: {type(exc).__name__}: {exc}",
            retryable=True,
        )
    return exc


def _check_status(resp: httpx.Response, url: str) -> None:
    if resp.status_code < 400:
        return
    text = resp.text[:300].replace("\n", " ")
    raise UpstreamError(
        f"the model endpoint {url} answered HTTP {resp.status_code}: {text}",
        retryable=resp.status_code == 429 or resp.status_code >= 500,
    )


def _loads(resp: httpx.Response, url: str) -> Any:
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        raise OutputInvalid(
            f"the model endpoint {url} answered with a body that is not JSON: {resp.text[:120]!r}"
        ) from None


class _HttpBase:
    flavor = "http"
    is_async = True

    def __init__(self, url: str, spec: EndpointSpec, names: Sequence[str], timeout_s: float):
        self.url = url
        self.spec = spec
        self.names = list(names)
        self.timeout = timeout_s
        self.headers = _headers(spec)
        self.classes = None
        self._clients: dict[int, httpx.AsyncClient] = {}
        self._limits = httpx.Limits(
            max_connections=spec.max_connections,
            max_keepalive_connections=spec.max_connections,
        )

    async def aclose(self) -> None:
        """Close this event loop's pooled client (``init`` scores on a loop of its own)."""
        c = self._clients.pop(id(asyncio.get_running_loop()), None)
        if c is not None:
            await c.aclose()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        c = self._clients.get(id(loop))
        if c is None:
            c = httpx.AsyncClient(timeout=self.timeout, limits=self._limits, headers=self.headers)
            self._clients[id(loop)] = c
        return c

    async def _post(self, body: Any) -> Any:
        try:
            resp = await self._client().post(self.url, content=orjson.dumps(body))
        except Exception as exc:
            raise _classify(exc, self.url) from None
        _check_status(resp, self.url)
        return _loads(resp, self.url)

    def _post_sync(self, client: httpx.Client, body: Any) -> Any:
        try:
            resp = client.post(self.url, content=orjson.dumps(body))
        except Exception as exc:
            raise _classify(exc, self.url) from None
        _check_status(resp, self.url)
        return _loads(resp, self.url)

    def _answer(self, item: Any) -> tuple[Any, float | None]:
        if isinstance(item, dict):
            if self.spec.output_field not in item:
                raise OutputInvalid(
                    f"an answer from {self.url} has no field {self.spec.output_field!r}: "
                    f"{str(item)[:2000]}"
                )
            conf = item.get(self.spec.confidence_field)
            if conf is not None and (isinstance(conf, bool) or not isinstance(conf, int | float)):
                raise OutputInvalid(f"an answer from {self.url} has a non-numeric confidence")
            return _py(item[self.spec.output_field]), None if conf is None else float(conf)
        return _py(item), None


class HttpJsonPredictor(_HttpBase):
    """A JSON model server: rows go out under ``request_key``, answers come back under
    ``response_key`` (one per row: a value, or an object with the output and confidence)."""

    def _body(self, rows: Sequence[Row]) -> dict[str, Any]:
        if self.spec.request_format == "values":
            payload: list[Any] = [list(r) for r in rows]
        else:
            names = self.names
            payload = [dict(zip(names, r, strict=True)) for r in rows]
        return {self.spec.request_key: payload}

    def _read(self, body: Any, n: int) -> Predictions:
        key = self.spec.response_key
        answers = body.get(key) if isinstance(body, dict) else None
        if not isinstance(answers, list):
            raise OutputInvalid(
                f"the answer from {self.url} has no list under {key!r}: {str(body)[:120]}"
            )
        if len(answers) != n:
            raise OutputInvalid(f"{self.url} returned {len(answers)} answers for {n} rows")
        outs, confs = [], []
        for item in answers:
            o, c = self._answer(item)
            outs.append(o)
            confs.append(c)
        return Predictions(outs, confs)

    async def apredict(self, rows: Sequence[Row]) -> Predictions:
        if self.spec.batch or len(rows) == 1:
            return self._read(await self._post(self._body(rows)), len(rows))
        parts = await asyncio.gather(*(self._post(self._body([r])) for r in rows))
        preds = [self._read(p, 1) for p in parts]
        return Predictions([p.outputs[0] for p in preds], [p.confidence[0] for p in preds])

    def predict(self, rows: Sequence[Row]) -> Predictions:
        with httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            if self.spec.batch:
                return self._read(self._post_sync(client, self._body(rows)), len(rows))
            preds = [self._read(self._post_sync(client, self._body([r])), 1) for r in rows]
        return Predictions([p.outputs[0] for p in preds], [p.confidence[0] for p in preds])


_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Template:
    """A prompt with ``{field}`` placeholders. Any other brace is text (a JSON example needs
    no escaping); ``{{`` and ``}}`` are literal braces around a name that would otherwise be
    a placeholder."""

    def __init__(self, text: str, names: Sequence[str]) -> None:
        self.text = text
        self.fields = [m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1)]
        unknown = sorted(set(self.fields) - set(names))
        if unknown:
            # the model is made again with them if they are id or metadata fields
            raise NeedsFields(
                unknown,
                hint=f" (the prompt names them; write {{{{{unknown[0]}}}}} for the literal "
                f"text {{{unknown[0]}}})",
            )

    def render(self, values: dict[str, Any]) -> str:
        def sub(m: re.Match[str]) -> str:
            tok = m.group(0)
            if tok == "{{":
                return "{"
            if tok == "}}":
                return "}"
            v = values[m.group(1)]
            return "" if v is None else str(v)

        return _PLACEHOLDER.sub(sub, self.text)


_PUNCT = re.compile(r"[^\w\s]+", re.UNICODE)


def _plain(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text).casefold().split())


class AnswerReader:
    """Turns a chat answer's text into an output and a confidence (``endpoint.answer``).

    Raises :class:`OutputInvalid` for text it cannot read; the caller makes that the row's
    invalid answer."""

    def __init__(self, spec: EndpointSpec, labels: Sequence[Any] | None, base: _HttpBase):
        self.kind = spec.answer
        self.base = base
        self.pattern = re.compile(spec.answer_pattern or "") if spec.answer == "regex" else None
        self.labels = [str(x) for x in labels] if labels else []
        self._by_plain = {_plain(x): x for x in self.labels}
        # the label itself (0, True, "billing") for the text that names it
        self._typed: dict[str, Any] = {str(x): x for x in labels} if labels else {}
        if self.kind == "label" and not self.labels:
            raise ConfigError("endpoint answer: label needs output.labels (a classification)")

    def read(self, content: Any) -> tuple[Any, float | None]:
        if self.kind == "json":
            try:
                parsed = orjson.loads(content) if isinstance(content, str) else content
            except orjson.JSONDecodeError:
                raise OutputInvalid(f"the chat answer is not JSON: «{content}»") from None
            return self.base._answer(parsed)
        text = "" if content is None else str(content)
        if self.kind == "regex":
            assert self.pattern is not None
            m = self.pattern.search(text)
            if m is None or m.group("output") is None:
                raise OutputInvalid(f"the chat answer does not match answer_pattern: «{text}»")
            conf = None
            if "confidence" in self.pattern.groupindex and m.group("confidence"):
                try:
                    conf = float(m.group("confidence"))
                except ValueError:
                    raise OutputInvalid(
                        f"the chat answer's confidence is not a number: «{text}»"
                    ) from None
            return self._value(m.group("output").strip()), conf
        return self._typed.get(self.label(text), self.label(text)), None

    def _value(self, text: str) -> Any:
        """A matched answer as the output spec's type: a label as declared, else a number
        when it reads as one (regression), else the text."""
        if self._typed:
            return self._typed.get(text, text)
        try:
            return float(text)
        except ValueError:
            return text

    def label(self, text: str) -> str:
        """Exact; then ignoring case, spaces and punctuation; then the first label word."""
        stripped = text.strip()
        if stripped in self.labels:
            return stripped
        plain = _plain(stripped)
        if plain in self._by_plain:
            return self._by_plain[plain]
        best: tuple[int, str] | None = None
        for key, label in self._by_plain.items():
            if not key:
                continue
            m = re.search(rf"(?<!\w){re.escape(key)}(?!\w)", plain)
            if m is not None and (best is None or m.start() < best[0]):
                best = (m.start(), label)
        if best is None:
            raise OutputInvalid(f"the chat answer names none of the labels {self.labels}: «{text}»")
        return best[1]


_Read = tuple[Any, float | None, float, tuple[int, int], str | None]


class ChatPredictor(_HttpBase):
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint, one prompt per row.

    The prompt template is filled from the row's validated inputs (``{field}``). The answer is
    read as ``endpoint.answer`` says (JSON, a label, or a regular expression). An answer that
    cannot be read is that row's invalid answer (the row goes down the fallback chain; the
    others keep theirs), and it is billed like any other: token usage times the manifest's
    prices is each row's cost, whatever became of its answer.
    """

    flavor = "chat"

    def __init__(
        self,
        url: str,
        spec: EndpointSpec,
        names: Sequence[str],
        timeout_s: float,
        labels: Sequence[Any] | None = None,
    ):
        super().__init__(url, spec, names, timeout_s)
        self.template = Template(spec.prompt, self.names)
        self.reader = AnswerReader(spec, labels, self)
        fmt = spec.response_format
        if fmt == "auto":
            fmt = "json_object" if spec.answer == "json" else "none"
        self.extra: dict[str, Any] = dict(spec.request)
        if fmt == "json_object":
            self.extra.setdefault("response_format", {"type": "json_object"})

    def _body(self, row: Row) -> dict[str, Any]:
        values = dict(zip(self.names, row, strict=True))
        messages = []
        if self.spec.system:
            messages.append({"role": "system", "content": self.spec.system})
        messages.append({"role": "user", "content": self.template.render(values)})
        return {
            "model": self.spec.model,
            "messages": messages,
            "temperature": self.spec.temperature,
            "max_tokens": self.spec.max_tokens,
            **self.extra,
        }

    def usage(self, body: Any) -> tuple[int, int]:
        """Prompt and completion tokens the answer says were billed."""
        usage = (body.get("usage") if isinstance(body, dict) else None) or {}
        if not isinstance(usage, dict):
            return 0, 0
        p, c = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (p, c))
        return (max(0, int(p)), max(0, int(c))) if ok else (0, 0)  # never a negative bill

    def _read(self, body: Any) -> _Read:
        """(output, confidence, cost, tokens, why the answer is invalid or None)."""
        p, c = self.usage(body)
        cost = (
            p / 1000.0 * self.spec.prompt_price_per_1k
            + c / 1000.0 * self.spec.completion_price_per_1k
        )
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            why = f"the chat answer from {self.url} has no message content"
            return None, None, cost, (p, c), why
        try:
            output, conf = self.reader.read(content)
        except OutputInvalid as exc:
            return None, None, cost, (p, c), exc.message
        return output, conf, cost, (p, c), None

    @staticmethod
    def _collect(read: list[_Read]) -> Predictions:
        invalid = [r[4] for r in read]
        return Predictions(
            [r[0] for r in read],
            [r[1] for r in read],
            [r[2] for r in read],
            invalid=invalid if any(invalid) else None,
            tokens=[r[3] for r in read],
        )

    async def apredict(self, rows: Sequence[Row]) -> Predictions:
        """One call per row. If every call fails, the first failure is raised (an outage the
        guards retry and the breaker counts); if only some do, the rows answered keep their
        answers, billed, and the others are marked invalid with the failure, to fall back."""
        bodies = await asyncio.gather(
            *(self._post(self._body(r)) for r in rows), return_exceptions=True
        )
        failures = [b for b in bodies if isinstance(b, BaseException)]
        if failures and len(failures) == len(bodies):
            raise failures[0]
        read: list[_Read] = []
        for b in bodies:
            if isinstance(b, BaseException):
                why = b.message if isinstance(b, ShipwayError) else f"{type(b).__name__}: {b}"
                read.append((None, None, 0.0, (0, 0), why))
            else:
                read.append(self._read(b))
        return self._collect(read)

    def predict(self, rows: Sequence[Row]) -> Predictions:
        with httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            return self._collect([self._read(self._post_sync(client, self._body(r))) for r in rows])


def read_endpoint_file(path: Path) -> EndpointSpec:
    """An endpoint section from a YAML file (the section itself, or a manifest holding one)."""
    import yaml
    from pydantic import ValidationError

    if not path.exists():
        raise InputError(f"endpoint file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return EndpointSpec.model_validate(data.get("endpoint", data) if data else {})
    except (yaml.YAMLError, ValidationError, AttributeError) as exc:
        first = str(exc).splitlines()
        raise InputError(f"{path} is not a valid endpoint section: {' '.join(first[:3])}") from None


def score_rows(
    predictor: HttpJsonPredictor | ChatPredictor,
    rows: Sequence[Row],
    *,
    concurrency: int = 8,
    progress: Any = None,
) -> Predictions:
    """Score ``rows`` over HTTP with at most ``concurrency`` calls in flight (``init`` scores
    an endpoint pilot's holdout with it); ``progress(done, total, cost)`` after each chunk."""

    async def run() -> Predictions:
        outs: list[Any] = []
        confs: list[Any] = []
        costs: list[float] = []
        invalid: list[str | None] = []
        any_cost = False
        try:
            for start in range(0, len(rows), concurrency):
                chunk = rows[start : start + concurrency]
                pred = await predictor.apredict(chunk)
                outs += pred.outputs
                confs += pred.confidence
                any_cost = any_cost or pred.cost is not None
                costs += pred.cost if pred.cost is not None else [0.0] * len(chunk)
                invalid += pred.invalid if pred.invalid is not None else [None] * len(chunk)
                if progress is not None:
                    progress(len(outs), len(rows), sum(costs))
        finally:
            await predictor.aclose()
        return Predictions(
            outs, confs, costs if any_cost else None, invalid=invalid if any(invalid) else None
        )

    return asyncio.run(run())


def endpoint_predictor(
    url: str,
    spec: EndpointSpec | None,
    names: Sequence[str],
    timeout_s: float,
    labels: Sequence[Any] | None = None,
) -> HttpJsonPredictor | ChatPredictor:
    spec = spec or EndpointSpec()
    if spec.kind == "chat":
        return ChatPredictor(url, spec, names, timeout_s, labels)
    return HttpJsonPredictor(url, spec, names, timeout_s)


__all__ = [
    "AnswerReader",
    "ChatPredictor",
    "HttpJsonPredictor",
    "Template",
    "endpoint_predictor",
    "read_endpoint_file",
    "score_rows",
]
