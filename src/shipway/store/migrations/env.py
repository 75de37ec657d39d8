"""Alembic environment: Shipway runs migrations on a connection it passes in."""

from __future__ import annotations

from alembic import context

from shipway.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via shipway.store.engine.migrate
    raise RuntimeError("run migrations through shipway.store.engine.migrate()")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
