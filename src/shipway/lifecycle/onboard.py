"""``shipway init``: turn a pilot (a model and its data) into a manifest and model version 1."""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shipway.contract import Contract, column_stats, infer_contract
from shipway.contract.infer import Roles
from shipway.errors import InputError, ModelError, ShipwayError
from shipway.lifecycle.evaluate import LOWER_IS_BETTER, NO_ANSWER, score
from shipway.manifest import (
    MANIFEST_FILENAME,
    AlertRule,
    EndpointSpec,
    Manifest,
    ModelRef,
    MonitorSpec,
    OutputSpec,
    QualitySpec,
    ServiceSpec,
    Threshold,
    dump_manifest,
)
from shipway.models import Registry
from shipway.models.predictor import Predictions, Row, probe
from shipway.models.registry import model_params
from shipway.models.sources import detect, open_predictor
from shipway.settings import Settings
from shipway.store.artifacts import sha256_file

#: How far below (or above) the holdout score the written thresholds sit.
THRESHOLD_SLACK = 0.02


@dataclass(frozen=True)
class InitResult:
    manifest_path: Path
    manifest: Manifest
    version: int
    metrics: dict[str, Any]
    holdout_rows: int
    rows: int
    example: dict[str, Any]
    """One row of the pilot's inputs, for the first request a user sends."""
    roles: dict[str, str] = field(default_factory=dict)
    """Fields init made ids or metadata (name -> role), for the user to check."""
    notes: list[str] = field(default_factory=list)
    """What scoring an endpoint pilot cost and found, for the user to read."""


#: How far below the holdout accuracy (or above its MAE) the proposed quality alert fires.
QUALITY_MARGIN = 0.05


def proposed_monitoring(kind: str, metrics: dict[str, Any]) -> MonitorSpec:
    """The monitoring ``init`` writes: errors, input drift and quality against the pilot's own
    holdout score, each notifying (add a webhook to be told; until then alerts are recorded)."""
    alerts = [
        AlertRule(name="errors", when="n >= 50 and error_rate > 0.05"),
        AlertRule(name="input-drift", when="drift_share > 0.3", **{"for": 2}),
    ]
    if kind == "classification" and "accuracy" in metrics:
        floor = round(max(0.0, metrics["accuracy"] - QUALITY_MARGIN), 4)
        alerts.append(AlertRule(name="quality", when=f"labeled >= 200 and accuracy < {floor}"))
    elif kind == "regression" and "mae" in metrics:
        ceiling = round(metrics["mae"] * (1 + 5 * QUALITY_MARGIN), 6)
        alerts.append(AlertRule(name="quality", when=f"labeled >= 200 and mae > {ceiling}"))
    return MonitorSpec(alerts=alerts)


def read_data(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise InputError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path).to_pandas()
        if suffix in (".csv", ".txt", ".tsv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as exc:
        raise InputError(f"cannot read data file {path}: {exc}") from None
    raise InputError(f"data file {path} is neither CSV nor Parquet (by its extension)")


def _score_endpoint(
    predictor: Any,
    url: str,
    rows: list[Row],
    idx: list[int],
    concurrency: int,
    progress: Callable[[int, int, float], None] | None,
) -> tuple[Predictions, list[str]]:
    """An endpoint pilot's answers for the rows ``idx`` (None elsewhere), and what to tell the
    user. The first row goes alone, so a wrong URL, key or prompt fails after one call."""
    from shipway.models.endpoints import score_rows

    if not idx:
        raise InputError("the holdout is empty; nothing to score the endpoint on")
    try:
        first = predictor.predict([rows[idx[0]]])
    except ShipwayError as exc:
        raise ModelError(
            f"the first test call to {url} failed, so nothing else was sent: {exc.message}"
        ) from None
    if progress is not None:
        progress(1, len(idx), sum(first.cost or [0.0]))
    done = sum(first.cost or [0.0])
    rest = score_rows(
        predictor,
        [rows[i] for i in idx[1:]],
        concurrency=concurrency,
        progress=None if progress is None else lambda d, t, c: progress(d + 1, t + 1, c + done),
    )
    outs: list[Any] = [None] * len(rows)
    confs: list[Any] = [None] * len(rows)
    invalid = [*(first.invalid or [None]), *(rest.invalid or [None] * len(rest.outputs))]
    for j, i in enumerate(idx):
        outs[i] = first.outputs[0] if j == 0 else rest.outputs[j - 1]
        confs[i] = first.confidence[0] if j == 0 else rest.confidence[j - 1]
    notes = [f"scored {len(idx)} holdout rows over HTTP"]
    if first.cost is not None or rest.cost is not None:
        notes[0] += f" for {done + sum(rest.cost or []):.4f} in token prices"
    bad = [w for w in invalid if w]
    if bad:
        notes.append(
            f"{len(bad)} of {len(idx)} answers could not be read and count as wrong "
            f"(the first: {bad[0]})"
        )
    return Predictions(outs, confs), notes


def _holdout_split(
    frame: pd.DataFrame, target: str, fraction: float, classification: bool, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(frame)
    if classification:
        hold: list[int] = []
        for _label, idx in frame.groupby(target, sort=True).indices.items():
            idx = np.array(idx)
            rng.shuffle(idx)
            k = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
            hold.extend(idx[:k].tolist())
        mask = np.zeros(n, dtype=bool)
        mask[hold] = True
    else:
        mask = rng.random(n) < fraction
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def thresholds_from(metrics: dict[str, float]) -> dict[str, Threshold]:
    out = {}
    for name, value in metrics.items():
        if name in LOWER_IS_BETTER:
            out[name] = Threshold(max=round(value * (1 + THRESHOLD_SLACK) + 1e-12, 6))
        else:
            out[name] = Threshold(min=round(value - THRESHOLD_SLACK, 6))
    return out


def _rows(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    """Rows as tuples of plain Python values, nulls as None."""
    cols = []
    for c in frame.columns:
        s = frame[c]
        vals = s.astype(object).where(s.notna(), None).tolist()
        cols.append([v.item() if isinstance(v, np.generic) else v for v in vals])
    return list(zip(*cols, strict=True))


def init_service(
    *,
    model: str,
    data: str | Path,
    target: str,
    name: str | None = None,
    directory: str | Path = ".",
    settings: Settings | None = None,
    holdout_fraction: float = 0.2,
    range_margin: float = 0.1,
    actor: str = "unknown",
    force: bool = False,
    endpoint: EndpointSpec | None = None,
    authorize: Callable[[Any], str] | None = None,
    ids: Sequence[str] = (),
    metadata: Sequence[str] = (),
    features: Sequence[str] = (),
    max_score_rows: int = 200,
    concurrency: int = 8,
    progress: Callable[[int, int, float], None] | None = None,
) -> InitResult:
    """Infer the contract, score the pilot on a holdout, register version 1, write the manifest.

    ``model`` is any source ``models/sources.py`` knows (the same as ``shipway models add``).
    A model behind an HTTP endpoint (billed per call, slow) is checked with one call, then
    scored on at most ``max_score_rows`` holdout rows, ``concurrency`` calls at a time,
    reporting ``progress(done, total, cost)``; a model in this process scores every row.
    """
    scratch = Path(tempfile.mkdtemp(prefix="shipway-init-"))
    try:
        return _init_service(
            scratch=scratch,
            model=model,
            data=data,
            target=target,
            name=name,
            directory=directory,
            settings=settings,
            holdout_fraction=holdout_fraction,
            range_margin=range_margin,
            actor=actor,
            force=force,
            endpoint=endpoint,
            authorize=authorize,
            ids=ids,
            metadata=metadata,
            features=features,
            max_score_rows=max_score_rows,
            concurrency=concurrency,
            progress=progress,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _init_service(
    *,
    scratch: Path,
    model: str,
    data: str | Path,
    target: str,
    name: str | None = None,
    directory: str | Path = ".",
    settings: Settings | None = None,
    holdout_fraction: float = 0.2,
    range_margin: float = 0.1,
    actor: str = "unknown",
    force: bool = False,
    endpoint: EndpointSpec | None = None,
    authorize: Callable[[Any], str] | None = None,
    ids: Sequence[str] = (),
    metadata: Sequence[str] = (),
    features: Sequence[str] = (),
    max_score_rows: int = 200,
    concurrency: int = 8,
    progress: Callable[[int, int, float], None] | None = None,
) -> InitResult:
    from shipway.store.location import Location, open_service_store

    settings = settings or Settings()
    directory = Path(directory)
    data_path = Path(data)
    frame = read_data(data_path)
    if target not in frame.columns:
        raise InputError(
            f"target column {target!r} is not in {data_path.name} "
            f"(columns: {', '.join(map(str, frame.columns[:12]))}"
            f"{', ...' if len(frame.columns) > 12 else ''})"
        )
    if len(frame) < 10:
        raise InputError(f"{data_path.name} has {len(frame)} rows; init needs at least 10")
    frame.columns = [str(c) for c in frame.columns]
    feature_frame = frame.drop(columns=[target])
    y = frame[target]
    if y.isna().any():
        raise InputError(f"target column {target!r} has {int(y.isna().sum())} empty values")

    manifest_path = directory / MANIFEST_FILENAME
    if manifest_path.exists() and not force:
        raise InputError(f"{manifest_path} already exists; pass --force to overwrite it")

    for flag, named in (("--id", ids), ("--meta", metadata), ("--feature", features)):
        unknown = [n for n in named if n not in frame.columns or n == target]
        if unknown:
            raise InputError(f"{flag} names no input column of {data_path.name}: {unknown}")
    overlap = sorted({*ids, *metadata} & set(features)) + sorted(set(ids) & set(metadata))
    if overlap:
        raise InputError(f"a field has one role; named twice with --id/--meta/--feature: {overlap}")

    contract_spec = infer_contract(
        feature_frame,
        range_margin=range_margin,
        roles=Roles(tuple(ids), tuple(metadata), tuple(features)),
    )
    names = [f.name for f in contract_spec.inputs]

    # -- load the pilot: it gets the features, and any id or metadata field it reads -----------
    source = detect(model)
    remote = source.kind == "http"
    # an endpoint's answers are read against the labels the data has (answer: label)
    guess = sorted({*map(_plain, y.tolist())}, key=str) if remote and y.dtype.kind != "f" else None
    predictor, obj = open_predictor(source, contract_spec.inputs, guess, scratch, endpoint=endpoint)
    params: dict[str, Any] = model_params(obj) if obj is not None else {}

    all_rows = _rows(feature_frame)
    scored_idx: list[int] | None = None
    notes: list[str] = []
    try:
        if remote:
            _tr, held = _holdout_split(frame, target, holdout_fraction, guess is not None)
            sample = np.random.default_rng(0).permutation(held)[:max_score_rows]
            scored_idx = sorted(int(i) for i in sample)
            pred_all, notes = _score_endpoint(
                predictor, source.text, all_rows, scored_idx, concurrency, progress
            )
        else:
            probe(predictor, all_rows[:64])
            pred_all = predictor.predict(all_rows)
    except ShipwayError:
        raise
    except Exception as exc:
        given = [f.name for f in contract_spec.inputs if f.role == "feature"]
        wants = getattr(obj, "n_features_in_", None)
        hint = (
            f"; it reads {wants} columns and was given {len(given)} features "
            f"({', '.join(given)}): name the others with --meta or --id"
            if isinstance(wants, int) and wants != len(given)
            else ""
        )
        raise ModelError(
            f"the model cannot predict on {data_path.name}: {type(exc).__name__}: {exc}{hint}"
        ) from None

    classes = getattr(predictor, "classes", None)
    is_classification = classes is not None or not pd.api.types.is_float_dtype(y.dtype)
    if is_classification:
        labels = classes if classes is not None else sorted({*map(_plain, y.tolist())}, key=str)
        output = OutputSpec(kind="classification", labels=labels)
    else:
        output = OutputSpec(kind="regression", min=float(y.min()), max=float(y.max()))

    # -- holdout metrics ----------------------------------------------------------------------
    if scored_idx is not None:  # an endpoint: the holdout rows it was asked about
        hold_idx = np.asarray(scored_idx, dtype=int)
    else:
        _train_idx, hold_idx = _holdout_split(frame, target, holdout_fraction, is_classification)
    y_hold = [_plain(v) for v in y.iloc[hold_idx].tolist()]
    pred_hold = [pred_all.outputs[i] for i in hold_idx]
    if is_classification:
        pred_hold = [NO_ANSWER if p is None else p for p in pred_hold]
    proba = None
    proba_of = getattr(predictor, "predict_proba", None)
    if proba_of is not None and classes is not None and is_classification:
        proba = proba_of([all_rows[i] for i in hold_idx])
    metrics = score(output.kind, y_hold, pred_hold, proba, list(output.labels or []))

    # -- check the data passes its own contract -----------------------------------------------
    checked = Contract(contract_spec).validate_table(
        pa.Table.from_pandas(feature_frame, preserve_index=False)
    )
    if checked.bad_count:  # pragma: no cover - inference guarantees this; a bug if not
        raise ShipwayError(
            f"internal error: {checked.bad_count} pilot rows fail the inferred contract"
        )

    # -- reference statistics and data ---------------------------------------------------------
    reference: dict[str, Any] = {
        "rows": len(frame),
        "holdout_rows": len(hold_idx),
        "inputs": {
            f.name: column_stats(feature_frame[f.name], f.type)
            if f.role == "feature"
            else {"role": f.role, "n": len(feature_frame)}
            for f in contract_spec.inputs
        },
    }
    ref_idx = hold_idx if scored_idx is not None else range(len(frame))  # rows with answers
    out_series = pd.Series([pred_all.outputs[i] for i in ref_idx])
    reference["output"] = column_stats(
        out_series, "category" if output.kind == "classification" else "float"
    )
    if any(c is not None for c in pred_all.confidence):
        reference["confidence"] = column_stats(
            pd.Series([pred_all.confidence[i] for i in ref_idx], dtype=float), "float"
        )
    ref_frame = feature_frame.copy()
    ref_frame["__output__"] = [  # None where an endpoint pilot was not asked
        str(o) if output.kind == "classification" and o is not None else o for o in pred_all.outputs
    ]
    ref_frame["__confidence__"] = pd.Series(pred_all.confidence, dtype=float)
    ref_frame["__target__"] = y.values
    ref_frame["__holdout__"] = np.isin(np.arange(len(frame)), hold_idx)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(ref_frame, preserve_index=False), buf)

    # -- register -------------------------------------------------------------------------------
    svc_name = name or _default_name(directory, data_path)
    manifest = Manifest(
        service=ServiceSpec(
            name=svc_name, description=f"Predicts {target!r} from {len(names)} inputs."
        ),
        model=ModelRef(version=1, uri="pending", source=str(model)),
        contract=contract_spec,
        output=output,
        quality=QualitySpec(holdout_fraction=holdout_fraction, metrics=thresholds_from(metrics)),
        endpoint=endpoint if source.kind == "http" else None,
        monitor=proposed_monitoring(output.kind, metrics),
    )
    location = Location.of(manifest, manifest_path.resolve(), settings)
    store = open_service_store(location, manifest)
    try:
        if authorize is not None:
            actor = authorize(store)  # may refuse: the store's keys decide who may init
        registry = Registry(store)
        if registry.list(svc_name) and not force:
            raise InputError(
                f"the store at {location.database_url.split('@')[-1]} already has service "
                f"{svc_name!r}; choose another --name or pass --force to add a new version"
            )
        flavor, uri, artifact, _obj = registry.stage(
            model, scratch, endpoint if source.kind == "http" else None
        )
        ref_digest = registry.store_artifact_bytes(buf.getvalue(), "reference")
        mv = registry.add(
            svc_name,
            uri=uri,
            flavor=flavor,
            contract=contract_spec,
            artifact_sha256=artifact,
            source=str(source.path.resolve()) if source.path is not None else model,
            data_sha256=sha256_file(data_path),
            reference_sha256=ref_digest,
            params=params,
            metrics={"holdout": metrics},
            reference=reference,
            note="registered by shipway init",
            actor=actor,
        )
    finally:
        store.close()
    manifest = manifest.model_copy(
        update={"model": ModelRef(version=mv.version, uri=uri, source=str(model))}
    )
    directory.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Shipway manifest for service {svc_name!r}, written by 'shipway init'.\n"
        "# The contract was inferred from the pilot data: numeric min/max are the observed range\n"
        f"# widened by {range_margin:.0%} of its span. Edit freely; 'shipway serve' validates it.\n"
    )
    manifest_path.write_text(header + dump_manifest(manifest), encoding="utf-8")
    example = {k: _plain(v) for k, v in feature_frame.iloc[0].items() if not pd.isna(v)}
    return InitResult(
        manifest_path,
        manifest,
        mv.version,
        metrics,
        len(hold_idx),
        len(frame),
        example,
        roles={f.name: f.role for f in contract_spec.inputs if f.role != "feature"},
        notes=notes,
    )


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _default_name(directory: Path, data: Path) -> str:
    import re

    base = data.stem.lower()
    base = re.sub(r"[^a-z0-9_-]+", "-", base).strip("-_") or "pilot"
    return base[:63]


__all__ = ["InitResult", "init_service", "read_data"]
