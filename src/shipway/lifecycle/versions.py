"""``shipway models add``: register a new version, checked and scored against the champion."""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipway.errors import InputError, ModelError, ShipwayError
from shipway.lifecycle.evaluate import GateResult, evaluate, gate, holdout
from shipway.lifecycle.rollout import Rollout
from shipway.manifest import EndpointSpec, Manifest
from shipway.models import ModelVersion, Registry
from shipway.models.predictor import probe
from shipway.models.registry import model_params
from shipway.models.sources import detect
from shipway.store import Store
from shipway.store.artifacts import sha256_file


@dataclass(frozen=True)
class AddResult:
    version: ModelVersion
    gate: GateResult
    metrics: dict[str, float]
    champion_version: int
    champion_metrics: dict[str, float]


def add_version(
    store: Store,
    manifest: Manifest,
    *,
    model: str,
    data: str | Path | None = None,
    note: str = "",
    actor: str = "unknown",
    endpoint: EndpointSpec | None = None,
    prompt: str | None = None,
    max_score_rows: int = 200,
) -> AddResult:
    """Check a model against the contract, score it on the service's holdout beside the
    champion, and register it with its lineage and gate result. Refuses (nothing registered)
    a model that needs inputs the contract lacks or that fails on the holdout.

    A model over HTTP is registered with its endpoint settings: ``endpoint`` if given, else
    the champion's (when it is the same kind of model) or the manifest's, with ``prompt`` in
    place of the prompt when given. So a prompt change is a version of its own. When either
    model is called over HTTP (each row a billed call), both are scored on the same sample of
    at most ``max_score_rows`` holdout rows."""
    service = manifest.service.name
    registry = Registry(store)
    names = [f.name for f in manifest.contract.inputs]
    labels = list(manifest.output.labels or [])
    champion_no = Rollout(store, manifest, registry).state().champion
    champion = registry.get(service, champion_no)
    rows, y = holdout(store, champion.reference_sha256, names)

    settings = None
    if detect(model).kind == "http":
        settings = endpoint or registry.endpoint_of(champion) or manifest.endpoint
        if settings is None:
            raise InputError(
                f"{model} is an HTTP model: give its settings with --endpoint FILE (kind, "
                "prompt, prices, ...) or add an endpoint section to the manifest"
            )
        if prompt is not None:
            settings = settings.model_copy(update={"prompt": prompt})
        try:  # the settings' own checks, and the prompt's fields against the contract
            settings = EndpointSpec.model_validate(settings.model_dump())
        except ValueError as exc:
            raise InputError(f"refused: the endpoint settings are not valid: {exc}") from None
    elif endpoint is not None or prompt is not None:
        raise InputError("--endpoint and --prompt-file are for HTTP models (http:// or https://)")
    if (settings is not None or champion.flavor == "http") and len(rows) > max_score_rows:
        keep = sorted(random.Random(0).sample(range(len(rows)), max_score_rows))
        rows, y = [rows[i] for i in keep], [y[i] for i in keep]
    with tempfile.TemporaryDirectory(prefix="shipway-add-") as scratch:
        flavor, uri, digest, obj = registry.stage(model, Path(scratch), settings)
    candidate = ModelVersion(
        service=service,
        version=0,
        uri=uri,
        flavor=flavor,
        artifact_sha256=digest,
        source=model,
        contract_sha256=manifest.contract.digest(),
        data_sha256=None,
        reference_sha256=champion.reference_sha256,
        params={},
        metrics={},
        reference={},
        note=note,
        created_by=actor,
        created_at=time.time(),
    )
    try:
        predictor = registry.load(
            candidate,
            manifest.contract,
            labels,
            endpoint=manifest.endpoint,
            timeout_s=manifest.guards.timeout_ms / 1000.0,
        )
    except ModelError as exc:
        raise ModelError(f"refused: {exc.message}") from None
    probe(predictor, rows[:64])
    try:
        metrics = evaluate(predictor, manifest.output, rows, y)
    except ShipwayError as exc:
        raise ModelError(f"refused: {exc.message}") from None
    champ_pred = registry.load(
        champion,
        manifest.contract,
        labels,
        endpoint=manifest.endpoint,
        timeout_s=manifest.guards.timeout_ms / 1000.0,
    )
    probe(champ_pred, rows[:64])
    champion_metrics = evaluate(champ_pred, manifest.output, rows, y)
    result = gate(manifest, metrics, champion_metrics)

    data_digest = None
    if data is not None:
        if not Path(data).exists():
            raise InputError(f"data file {data} does not exist")
        data_digest = sha256_file(data)
    params: dict[str, Any] = model_params(obj) if obj is not None else {}
    mv = registry.add(
        service,
        uri=uri,
        flavor=flavor,
        contract=manifest.contract,
        artifact_sha256=digest,
        source=str(Path(model).resolve()) if Path(model).exists() else model,
        data_sha256=data_digest,
        reference_sha256=champion.reference_sha256,
        params=params,
        metrics={
            "holdout": metrics,
            "champion": {"version": champion.version, "holdout": champion_metrics},
            "gate": result.to_dict(),
        },
        reference=champion.reference,
        note=note,
        actor=actor,
    )
    return AddResult(mv, result, metrics, champion.version, champion_metrics)


__all__ = ["AddResult", "add_version"]
