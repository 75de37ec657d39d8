"""The store's tables (SQLAlchemy Core). Change them only together with a migration."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

artifacts = Table(
    "artifacts",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("uri", Text, nullable=False),
    Column("artifact_sha256", String(64), nullable=True),
    Column("flavor", String(32), nullable=False),
    Column("source", Text, nullable=False, default=""),
    Column("contract_sha256", String(64), nullable=False),
    Column("data_sha256", String(64), nullable=True),
    Column("reference_sha256", String(64), nullable=True),
    Column("params", JSON, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("reference", JSON, nullable=False),
    Column("note", Text, nullable=False, default=""),
    Column("created_by", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("service", "version", name="uq_model_versions_service_version"),
)

decisions = Table(
    "decisions",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("id", String(36), nullable=False, unique=True),
    Column("ts", Float, nullable=False),
    Column("service", String(64), nullable=False),
    Column("model_version", Integer, nullable=True),
    Column("route", String(64), nullable=False),
    Column("inputs", Text, nullable=False),
    Column("output", Text, nullable=True),
    Column("confidence", Float, nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("caller", String(128), nullable=True),
)
Index("ix_decisions_service_ts", decisions.c.service, decisions.c.ts)

__all__ = ["artifacts", "decisions", "metadata", "model_versions"]
