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
import string
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from shipway.errors import ConfigError, ModelTimeout, OutputInvalid, UpstreamError
from shipway.manifest import EndpointSpec
from shipway.models.predictor import Predictions, Row, _py


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
                    f"{str(item)[:120]}"
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


class ChatPredictor(_HttpBase):
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint, one prompt per row.

    The prompt template is filled from the row's validated inputs (``{field}``). The answer's
    content must be JSON: an object holding ``output_field`` (and optionally
    ``confidence_field``), or a bare value. Token usage times the manifest's prices is the
    decision's cost.
    """

    flavor = "chat"

    def __init__(self, url: str, spec: EndpointSpec, names: Sequence[str], timeout_s: float):
        super().__init__(url, spec, names, timeout_s)
        fields = {f for _, f, _, _ in string.Formatter().parse(spec.prompt) if f}
        unknown = sorted(fields - set(self.names))
        if unknown:
            raise ConfigError(
                f"the endpoint prompt names fields the contract does not have: {unknown}"
            )

    def _body(self, row: Row) -> dict[str, Any]:
        values = dict(zip(self.names, row, strict=True))
        messages = []
        if self.spec.system:
            messages.append({"role": "system", "content": self.spec.system})
        messages.append({"role": "user", "content": self.spec.prompt.format_map(values)})
        return {
            "model": self.spec.model,
            "messages": messages,
            "temperature": self.spec.temperature,
            "max_tokens": self.spec.max_tokens,
            "response_format": {"type": "json_object"},
        }

    def _read(self, body: Any) -> tuple[Any, float | None, float]:
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise OutputInvalid(
                f"the chat answer from {self.url} has no choices[0].message.content"
            ) from None
        try:
            parsed = orjson.loads(content) if isinstance(content, str) else content
        except orjson.JSONDecodeError:
            raise OutputInvalid(f"the chat answer is not JSON: {str(content)[:120]!r}") from None
        output, conf = self._answer(parsed)
        usage = body.get("usage") or {}
        p = usage.get("prompt_tokens") or 0
        c = usage.get("completion_tokens") or 0
        cost = (
            p / 1000.0 * self.spec.prompt_price_per_1k
            + c / 1000.0 * self.spec.completion_price_per_1k
        )
        return output, conf, cost

    async def apredict(self, rows: Sequence[Row]) -> Predictions:
        bodies = await asyncio.gather(*(self._post(self._body(r)) for r in rows))
        read = [self._read(b) for b in bodies]
        return Predictions([r[0] for r in read], [r[1] for r in read], [r[2] for r in read])

    def predict(self, rows: Sequence[Row]) -> Predictions:
        with httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            read = [self._read(self._post_sync(client, self._body(r))) for r in rows]
        return Predictions([r[0] for r in read], [r[1] for r in read], [r[2] for r in read])


def endpoint_predictor(
    url: str, spec: EndpointSpec | None, names: Sequence[str], timeout_s: float
) -> HttpJsonPredictor | ChatPredictor:
    spec = spec or EndpointSpec()
    if spec.kind == "chat":
        return ChatPredictor(url, spec, names, timeout_s)
    return HttpJsonPredictor(url, spec, names, timeout_s)


__all__ = ["ChatPredictor", "HttpJsonPredictor", "endpoint_predictor"]
