"""The store on SQLite and PostgreSQL: migrations, registry, artifacts, decision log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import inspect

from shipway.decisions import DecisionLog, get, iter_decisions
from shipway.errors import ArtifactIntegrityError, NotFound
from shipway.manifest import ContractSpec, InputField
from shipway.models import Registry
from shipway.store import open_store
from shipway.store.engine import migrate

CONTRACT = ContractSpec(inputs=[InputField(name="x", type="float", min=0, max=1)])


def _row(i: int, service: str = "svc") -> dict:
    return {
        "id": f"d-{i:06d}",
        "ts": 1000.0 + i,
        "service": service,
        "model_version": 1,
        "route": "champion",
        "inputs": {"x": i / 10, "note": "ü"},
        "output": i % 2,
        "confidence": 0.5 + i / 1000,
        "latency_ms": 1.5,
        "caller": "test",
    }


def test_migrations_create_tables_and_are_idempotent(database_url: str, tmp_path: Path) -> None:
    store = open_store(database_url, tmp_path / "art")
    try:
        tables = set(inspect(store.engine).get_table_names())
        assert {"artifacts", "model_versions", "decisions", "alembic_version"} <= tables
        migrate(store.engine)  # a second run changes nothing and does not fail
        assert store.ping()
    finally:
        store.close()


def test_registry_numbers_versions_and_keeps_lineage(database_url: str, tmp_path: Path) -> None:
    store = open_store(database_url, tmp_path / "art")
    try:
        reg = Registry(store)
        src = tmp_path / "m.bin"
        src.write_bytes(b"model-bytes")
        digest = reg.store_artifact(src, "model")
        v1 = reg.add(
            "svc",
            uri=f"sklearn:sha256:{digest}",
            flavor="sklearn",
            contract=CONTRACT,
            artifact_sha256=digest,
            metrics={"holdout": {"accuracy": 0.9}},
            params={"C": 1.0},
            actor="ana",
        )
        v2 = reg.add("svc", uri="python:m:f", flavor="python", contract=CONTRACT, actor="bo")
        other = reg.add("other", uri="python:m:f", flavor="python", contract=CONTRACT)
        assert (v1.version, v2.version, other.version) == (1, 2, 1)
        got = reg.get("svc", 1)
        assert got.metrics == {"holdout": {"accuracy": 0.9}}
        assert got.params == {"C": 1.0}
        assert got.created_by == "ana"
        assert got.contract_sha256 == CONTRACT.digest()
        assert [v.version for v in reg.list("svc")] == [1, 2]
        with pytest.raises(NotFound):
            reg.get("svc", 3)
        assert store.artifacts.read_verified(digest) == b"model-bytes"
        store.artifacts.path_for(digest).write_bytes(b"swapped")
        with pytest.raises(ArtifactIntegrityError):
            store.artifacts.read_verified(digest)
    finally:
        store.close()


def test_decision_log_group_commits_and_reads_back(database_url: str, tmp_path: Path) -> None:
    store = open_store(database_url, tmp_path / "art")
    log = DecisionLog(store.engine, max_batch=64)
    log.start()

    async def write_concurrently() -> None:
        await asyncio.gather(*(log.write([_row(i)]) for i in range(300)))

    try:
        asyncio.run(write_concurrently())
        log.write_sync([_row(300, "other")])
        assert log.committed == 301
        # concurrent writers were committed in fewer transactions than rows
        assert log.group_commits < 300
        rows = list(iter_decisions(store.engine, service="svc", chunk=50))
        assert sorted(r["id"] for r in rows) == [f"d-{i:06d}" for i in range(300)]
        one = get(store.engine, "d-000007")
        assert one is not None
        assert one["inputs"] == {"x": 0.7, "note": "ü"} and one["output"] == 1
        assert get(store.engine, "nope") is None
        since = list(iter_decisions(store.engine, service="svc", since=1000.0 + 290))
        assert len(since) == 10
        assert len(list(iter_decisions(store.engine))) == 301
    finally:
        log.stop()
        store.close()


def test_stop_commits_everything_queued(database_url: str, tmp_path: Path) -> None:
    store = open_store(database_url, tmp_path / "art")
    log = DecisionLog(store.engine, max_batch=8)
    log.start()

    async def queue_and_stop() -> list[asyncio.Future]:
        futs = [asyncio.ensure_future(log.write([_row(i)])) for i in range(100)]
        await asyncio.sleep(0)  # let every write reach the queue
        await asyncio.get_running_loop().run_in_executor(None, log.stop)
        await asyncio.gather(*futs)
        return futs

    try:
        asyncio.run(queue_and_stop())
        assert len(list(iter_decisions(store.engine))) == 100
    finally:
        store.close()


def test_store_error_is_clear_when_unreachable(tmp_path: Path) -> None:
    from shipway.errors import StoreError

    t0 = time.monotonic()
    with pytest.raises(StoreError, match="cannot open the store at postgresql") as info:
        open_store(
            "postgresql+psycopg://nobody:s3cr3t-pw@127.0.0.1:1/none?connect_timeout=2",
            tmp_path / "art",
        )
    assert "s3cr3t-pw" not in info.value.message  # the password is never printed
    assert time.monotonic() - t0 < 30
