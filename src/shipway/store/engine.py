"""Engines for SQLite (embedded default) and PostgreSQL, with migrations applied on open."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError

from shipway.errors import StoreError
from shipway.store.artifacts import ArtifactStore

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Store:
    engine: Engine
    artifacts: ArtifactStore

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(sync: str) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={sync.upper()}")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def make_engine(url: str, *, sqlite_sync: str = "normal") -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_sync))
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # One migrator at a time when several replicas start together.
            conn.execute(text("SELECT pg_advisory_xact_lock(7244001)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_store(
    url: str, artifacts_dir: str | Path, *, sqlite_sync: str = "normal", migrate_schema: bool = True
) -> Store:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url, sqlite_sync=sqlite_sync)
    try:
        if migrate_schema:
            migrate(engine)
        else:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(
            f"cannot open the store at {engine.url.render_as_string(hide_password=True)}: "
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"
        ) from None
    return Store(engine=engine, artifacts=ArtifactStore(Path(artifacts_dir)))


__all__ = ["Store", "make_engine", "migrate", "open_store"]
