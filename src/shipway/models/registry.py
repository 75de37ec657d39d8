"""The model registry: immutable, numbered model versions with their lineage.

A version records where the model came from, the sha256 of its artifact (the only way it is
ever loaded), the contract it was checked against, the data it was evaluated on, its metrics,
its parameters, and the reference statistics later used for drift monitoring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from shipway.errors import ModelError, NotFound
from shipway.govern import audit
from shipway.manifest import ContractSpec, EndpointSpec
from shipway.models.predictor import (
    FunctionPredictor,
    Predictor,
    SklearnPredictor,
    for_fields,
    import_callable,
    load_sklearn_bytes,
)
from shipway.models.sources import detect
from shipway.store import Store
from shipway.store.tables import artifacts, model_versions


@dataclass(frozen=True)
class ModelVersion:
    service: str
    version: int
    uri: str
    flavor: str
    artifact_sha256: str | None
    source: str
    contract_sha256: str
    data_sha256: str | None
    reference_sha256: str | None
    params: dict[str, Any]
    metrics: dict[str, Any]
    reference: dict[str, Any]
    note: str
    created_by: str
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sklearn_uri(digest: str) -> str:
    return f"sklearn:sha256:{digest}"


def model_params(model: Any) -> dict[str, Any]:
    """JSON-safe top-level parameters of a scikit-learn estimator (empty for others)."""
    get = getattr(model, "get_params", None)
    if get is None:
        return {}
    out: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    try:
        params = get(deep=False)
    except Exception:
        return out
    for k, v in params.items():
        if v is None or isinstance(v, bool | int | float | str):
            out[k] = v
        else:
            out[k] = type(v).__name__
    return out


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    def store_artifact(self, path: str | Path, kind: str) -> str:
        digest, size = self.store.artifacts.put_file(path)
        self._record_artifact(digest, size, kind)
        return digest

    def store_artifact_bytes(self, data: bytes, kind: str) -> str:
        digest, size = self.store.artifacts.put_bytes(data)
        self._record_artifact(digest, size, kind)
        return digest

    def _record_artifact(self, digest: str, size: int, kind: str) -> None:
        with self.store.engine.begin() as conn:
            exists = conn.execute(
                select(artifacts.c.sha256).where(artifacts.c.sha256 == digest)
            ).first()
            if not exists:
                conn.execute(
                    insert(artifacts).values(
                        sha256=digest, size=size, kind=kind, created_at=time.time()
                    )
                )

    def add(
        self,
        service: str,
        *,
        uri: str,
        flavor: str,
        contract: ContractSpec,
        artifact_sha256: str | None = None,
        source: str = "",
        data_sha256: str | None = None,
        reference_sha256: str | None = None,
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        reference: dict[str, Any] | None = None,
        note: str = "",
        actor: str = "unknown",
    ) -> ModelVersion:
        for _attempt in range(5):
            with self.store.engine.begin() as conn:
                current = conn.execute(
                    select(func.max(model_versions.c.version)).where(
                        model_versions.c.service == service
                    )
                ).scalar()
                row = {
                    "service": service,
                    "version": (current or 0) + 1,
                    "uri": uri,
                    "flavor": flavor,
                    "artifact_sha256": artifact_sha256,
                    "source": source,
                    "contract_sha256": contract.digest(),
                    "data_sha256": data_sha256,
                    "reference_sha256": reference_sha256,
                    "params": params or {},
                    "metrics": metrics or {},
                    "reference": reference or {},
                    "note": note,
                    "created_by": actor,
                    "created_at": time.time(),
                }
                try:
                    conn.execute(insert(model_versions).values(**row))
                except IntegrityError:
                    continue  # another writer took that number; take the next
                audit.append(
                    conn,
                    actor=actor,
                    action="model.add",
                    target=f"service:{service}/v{row['version']}",
                    service=service,
                    after={
                        "version": row["version"],
                        "flavor": flavor,
                        "uri": uri,
                        "artifact_sha256": artifact_sha256,
                    },
                    reason=note,
                )
            return ModelVersion(**row)  # type: ignore[arg-type]
        raise ModelError(f"could not allocate a version number for service {service!r}")

    def get(self, service: str, version: int) -> ModelVersion:
        with self.store.engine.connect() as conn:
            row = (
                conn.execute(
                    select(model_versions).where(
                        model_versions.c.service == service, model_versions.c.version == version
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"service {service!r} has no model version {version} in the store")
        return ModelVersion(**{str(k): v for k, v in row.items() if k != "id"})

    def treat_references(
        self, service: str, treat: Callable[[dict[str, Any]], dict[str, Any] | None], actor: str
    ) -> list[int]:
        """Apply ``treat`` (personal-data treatment) to the reference statistics of every
        version of ``service`` that needs it, with an audit event each; the versions changed."""
        changed = []
        for mv in self.list(service):
            new = treat(mv.reference)
            if new is None:
                continue
            with self.store.engine.begin() as conn:
                conn.execute(
                    update(model_versions)
                    .where(
                        model_versions.c.service == service,
                        model_versions.c.version == mv.version,
                    )
                    .values(reference=new)
                )
                audit.append(
                    conn,
                    actor=actor,
                    action="model.pii",
                    target=f"service:{service}/v{mv.version}",
                    service=service,
                    after={"treated": new.get("pii")},
                    reason="personal fields treated in the reference statistics",
                )
            changed.append(mv.version)
        return changed

    def list(self, service: str) -> list[ModelVersion]:
        with self.store.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(model_versions)
                    .where(model_versions.c.service == service)
                    .order_by(model_versions.c.version)
                )
                .mappings()
                .all()
            )
        return [ModelVersion(**{str(k): v for k, v in r.items() if k != "id"}) for r in rows]

    def stage(
        self, model: str, scratch: Path, endpoint: EndpointSpec | None = None
    ) -> tuple[str, str, str | None, Any]:
        """Store a model source as an artifact: (flavor, uri, sha256, loaded object or None).

        ``model`` is a joblib file (scikit-learn), an ``.onnx`` file, an MLflow model folder or
        ``models:/`` / ``runs:/`` URI, ``python:module:function``, or an ``http(s)://`` URL,
        whose ``endpoint`` settings (prompt, model name, parameters, prices) are the version's
        artifact: a changed prompt is a new version, shadowed and gated like any other.
        """
        source = detect(model)
        if source.kind == "python":
            import_callable(model)
            return "python", model, None, None
        if source.kind == "http":
            if endpoint is None:
                return "http", model, None, None
            config = orjson.dumps(endpoint.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
            return "http", model, self.store_artifact_bytes(config, "endpoint"), None
        if source.kind == "mlflow":
            from shipway.models.formats import fetch_mlflow_uri, pack_directory

            folder = fetch_mlflow_uri(model, scratch / "mlflow") if source.remote else source.path
            assert folder is not None
            digest = self.store_artifact_bytes(pack_directory(folder), "mlflow")
            return "mlflow", f"mlflow:sha256:{digest}", digest, None
        assert source.path is not None
        if source.kind == "onnx":
            digest = self.store_artifact(source.path, "onnx")
            return "onnx", f"onnx:sha256:{digest}", digest, None
        obj = load_sklearn_bytes(source.path.read_bytes())
        digest = self.store_artifact(source.path, "model")
        return "sklearn", sklearn_uri(digest), digest, obj

    def endpoint_of(self, mv: ModelVersion) -> EndpointSpec | None:
        """The endpoint settings registered with an HTTP version (None: the manifest's)."""
        if mv.flavor != "http" or not mv.artifact_sha256:
            return None
        return EndpointSpec.model_validate_json(
            self.store.artifacts.read_verified(mv.artifact_sha256)
        )

    def load(
        self,
        mv: ModelVersion,
        contract: ContractSpec,
        labels: Sequence[Any] | None = None,
        *,
        endpoint: EndpointSpec | None = None,
        timeout_s: float = 2.0,
    ) -> Predictor:
        """A predictor for a registered version; artifact bytes are verified before loading.

        Versions served over HTTP (flavor ``http``) are called as the endpoint settings
        registered with them say (older versions: the manifest's ``endpoint`` section), with
        ``timeout_s`` per call.
        """
        if mv.flavor not in ("python", "http") and not mv.artifact_sha256:
            raise ModelError(f"model version {mv.version} has no artifact digest")

        loaded: list[Any] = []

        def make(names: list[str], numeric: bool) -> Predictor:
            if mv.flavor == "python":
                return FunctionPredictor(import_callable(mv.uri), names)
            if mv.flavor == "http":
                from shipway.models.endpoints import endpoint_predictor

                spec = self.endpoint_of(mv) or endpoint
                return endpoint_predictor(mv.uri, spec, names, timeout_s, labels)
            data = self.store.artifacts.read_verified(mv.artifact_sha256 or "")
            if mv.flavor == "sklearn":
                if not loaded:  # made twice when the model reads an id or metadata field
                    loaded.append(load_sklearn_bytes(data))
                return SklearnPredictor(loaded[0], names, numeric)
            if mv.flavor == "onnx":
                from shipway.models.formats import OnnxPredictor

                return OnnxPredictor(data, names, labels)
            if mv.flavor == "mlflow":
                from shipway.models.formats import load_mlflow, unpack_directory

                return load_mlflow(unpack_directory(data), names, labels, numeric)
            raise ModelError(f"unknown model flavor {mv.flavor!r} for version {mv.version}")

        return for_fields(make, contract.inputs)


__all__ = ["ModelVersion", "Registry", "model_params", "sklearn_uri"]
