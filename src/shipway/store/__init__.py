"""Storage: SQLAlchemy Core tables, Alembic migrations, engines for SQLite and PostgreSQL."""

from shipway.store.engine import Store, open_store
from shipway.store.tables import metadata

__all__ = ["Store", "metadata", "open_store"]
