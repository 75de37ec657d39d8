"""Process settings, read once from the environment (``SHIPWAY_*``) and never mutated.

The manifest says what a service is; settings say where this process runs it (database,
logging). Tests build their own ``Settings`` and pass them in.
"""

from __future__ import annotations

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPWAY_", frozen=True, extra="ignore")

    database_url: SecretStr | None = None
    """SQLAlchemy URL of the store. Unset: SQLite at ``<manifest dir>/.shipway/shipway.db``."""

    @field_validator("database_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    log_level: str = "info"
    actor: str | None = None
    """Who the CLI acts as in audit records; defaults to the operating-system user."""


__all__ = ["Settings"]
