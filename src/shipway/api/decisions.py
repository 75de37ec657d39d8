"""Reading the decision log over HTTP.

What a decision shows depends on who asks. Without ``read_inputs`` (viewers, predictors):
no inputs, an error as its code only, no fallback reasons (error text may quote inputs). A
decision held for review shows its caller the status only until a reviewer decides; the model's
own answer (``model_output``) and its confidence are for roles that may read inputs.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shipway.api.access import principal_of
from shipway.api.common import json_response, service_of
from shipway.govern.roles import READ_INPUTS, Principal

router = APIRouter()


_CODE = re.compile(r"^[a-z_]+(?=: )")


def shown_to(d: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """The decision as ``principal`` may see it."""
    if principal.can(READ_INPUTS):
        return d
    d.pop("inputs", None)
    if d.get("error"):
        m = _CODE.match(d["error"])
        d["error"] = m.group(0) if m else "model_error"
    if d.get("reason"):
        d["reason"] = "withheld: reasons may quote inputs (needs the read_inputs permission)"
    if d.get("review", {}).get("mode") == "hold":
        d.pop("model_output", None)
        d.pop("confidence", None)
    return d


@router.get("/v1/decisions/{decision_id}", tags=["control"], summary="One logged decision")
async def decision(decision_id: str, request: Request) -> Response:
    d = await run_in_threadpool(service_of(request).decision, decision_id)
    return json_response(shown_to(d, principal_of(request)))


__all__ = ["router"]
