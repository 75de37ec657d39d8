"""The baseline: a bare Starlette endpoint calling the same model (no validation, no log).

    python bench/_bare_app.py MODEL.joblib PORT
"""

from __future__ import annotations

import sys
import warnings

import joblib
import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

warnings.filterwarnings("ignore", message="X does not have valid feature names")
model = joblib.load(sys.argv[1])
names = [str(n) for n in model.feature_names_in_]
classes = model.classes_.tolist()


def _answer(x: np.ndarray) -> list[dict[str, object]]:
    proba = model.predict_proba(x)
    idx = proba.argmax(axis=1)
    return [{"output": classes[i], "confidence": float(proba[k, i])}
            for k, i in enumerate(idx.tolist())]


async def predict(request: Request) -> Response:
    inputs = orjson.loads(await request.body())["inputs"]
    if isinstance(inputs, dict):
        x = np.array([[inputs[n] for n in names]], dtype=np.float64)
        return Response(orjson.dumps(_answer(x)[0]), media_type="application/json")
    x = np.array([[r[n] for n in names] for r in inputs], dtype=np.float64)
    return Response(orjson.dumps({"decisions": _answer(x)}), media_type="application/json")


async def healthz(_request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"]),
                        Route("/healthz", healthz)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                access_log=False, loop="uvloop", http="httptools")
