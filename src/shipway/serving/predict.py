"""The predict path: validate, route, score, log, answer.

Kept lean on purpose: no per-request imports, no database round trip other than the group
commit of the decision log, and the model runs on its own thread so the event loop only
parses, validates and answers.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from shipway.contract import Contract
from shipway.decisions import DecisionLog
from shipway.errors import BadRequest, ContractViolation, ModelError
from shipway.metrics import ServiceMetrics
from shipway.models.predictor import Predictions
from shipway.serving.router import Router

_uuid4 = uuid.uuid4
_now = time.time
_perf = time.perf_counter


def _violation_message(fields: list[dict[str, Any]], rows: int) -> str:
    first = fields[0]
    where = f"row {first['row']}: " if rows > 1 else ""
    what = f"field {first['field']!r}" if first["field"] is not None else "the row"
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return f"{where}{what} breaks rule {first['rule']!r}: expected {first['expected']}{more}"


class PredictPath:
    def __init__(
        self,
        *,
        service: str,
        contract: Contract,
        router: Router,
        log: DecisionLog,
        metrics: ServiceMetrics,
        max_batch_rows: int,
    ) -> None:
        self.service = service
        self.contract = contract
        self.router = router
        self.log = log
        self.metrics = metrics
        self.max_batch_rows = max_batch_rows
        self.partial = contract.spec.on_bad_rows == "partial"
        self._names = contract.names
        self._violation_children: dict[tuple[str, str], Any] = {}
        self._decision_children: dict[tuple[str, int], Any] = {}

    def _count_violations(self, fields: list[dict[str, Any]], bad_rows: int) -> None:
        self.metrics.rejected_rows.inc(bad_rows)
        for v in fields:
            key = (str(v["field"]), v["rule"])
            c = self._violation_children.get(key)
            if c is None:
                c = self._violation_children[key] = self.metrics.contract_violations.labels(*key)
            c.inc()

    async def run(self, payload: Any, caller: str | None = None) -> dict[str, Any]:
        """Answer one predict request body; raises ShipwayError subclasses on refusal."""
        t0 = _perf()
        if type(payload) is not dict or "inputs" not in payload:
            raise BadRequest('the body must be a JSON object with an "inputs" field')
        extra = payload.keys() - {"inputs"}
        if extra:
            raise BadRequest(f'unknown top-level field(s): {sorted(extra)}; only "inputs" is read')
        inputs = payload["inputs"]
        single = type(inputs) is dict
        if single:
            records = [inputs]
        elif type(inputs) is list:
            records = inputs
            if not records:
                raise BadRequest('"inputs" is an empty list: send at least one row')
            if len(records) > self.max_batch_rows:
                raise BadRequest(
                    f'"inputs" has {len(records)} rows; this service takes at most '
                    f"{self.max_batch_rows} per request (serving.max_batch_rows)"
                )
        else:
            raise BadRequest('"inputs" must be an object (one row) or a list of objects (a batch)')

        checked = self.contract.validate_records(records)
        rejected: list[dict[str, Any]] = []
        if checked.violations:
            self._count_violations(checked.violations, len(checked.bad_rows))
            if single or not self.partial or not checked.values:
                raise ContractViolation(
                    _violation_message(checked.violations, len(records)), checked.violations
                )
            rejected = checked.violations

        lane = self.router.pick()
        try:
            pred: Predictions = await lane.runner.submit(checked.values)
        except ModelError:
            self.metrics.model_errors.labels(str(lane.version)).inc()
            raise
        except Exception as exc:
            self.metrics.model_errors.labels(str(lane.version)).inc()
            raise ModelError(
                f"model version {lane.version} failed: {type(exc).__name__}: {exc}"
            ) from None

        latency_ms = (_perf() - t0) * 1000.0
        ts = _now()
        names = self._names
        rows = []
        out = []
        for i, vals, output, conf in zip(
            checked.good, checked.values, pred.outputs, pred.confidence, strict=True
        ):
            did = str(_uuid4())
            rows.append(
                {
                    "id": did,
                    "ts": ts,
                    "service": self.service,
                    "model_version": lane.version,
                    "route": lane.route,
                    "inputs": dict(zip(names, vals, strict=True)),
                    "output": output,
                    "confidence": conf,
                    "latency_ms": latency_ms,
                    "caller": caller,
                }
            )
            out.append(
                {
                    "id": did,
                    "output": output,
                    "confidence": conf,
                    "model_version": lane.version,
                    "route": lane.route,
                    "row": i,
                }
            )
        await self.log.write(rows)
        key = (lane.route, lane.version)
        c = self._decision_children.get(key)
        if c is None:
            c = self._decision_children[key] = self.metrics.decisions.labels(
                lane.route, str(lane.version)
            )
        c.inc(len(rows))
        if single:
            d = out[0]
            del d["row"]
            return d
        body: dict[str, Any] = {"decisions": out}
        if rejected:
            body["rejected"] = rejected
        else:
            for d in out:
                del d["row"]
        return body


__all__ = ["PredictPath"]
