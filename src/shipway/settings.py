"""Process settings, read once from the environment (``SHIPWAY_*``) and never mutated.

The manifest says what a service is; settings say where this process runs it (database,
logging). Tests build their own ``Settings`` and pass them in.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shipway.errors import ConfigError

#: Values that must never serve as a production secret.
WEAK_SECRETS = frozenset(
    {"", "changeme", "change-me", "secret", "shipway", "development", "dev", "test", "password"}
)
_DEV_SECRET = b"shipway-development-secret-not-for-production"


#: Bits of entropy a server secret must carry (estimated from its characters).
MIN_SECRET_BITS = 64


def secret_weakness(value: str) -> str | None:
    """Why ``value`` is too weak to be the server secret, or None when it will do: a known
    default, fewer than 16 characters, fewer than 8 distinct ones, or less than
    :data:`MIN_SECRET_BITS` of entropy estimated from how often each character occurs."""
    if value.lower() in WEAK_SECRETS:
        return "a well-known default"
    if len(value) < 16:
        return f"{len(value)} characters, at least 16 are needed"
    counts = Counter(value)
    if len(counts) < 8:
        return f"only {len(counts)} distinct characters"
    bits = -sum(n * math.log2(n / len(value)) for n in counts.values())
    if bits < MIN_SECRET_BITS:
        return f"about {bits:.0f} bits of entropy, at least {MIN_SECRET_BITS} are needed"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPWAY_", frozen=True, extra="ignore")

    database_url: SecretStr | None = None
    """SQLAlchemy URL of the store. Unset: SQLite at ``<manifest dir>/.shipway/shipway.db``."""

    dev_mode: bool = False
    """Development mode: authentication off (said loudly), a built-in secret allowed."""
    secret_key: SecretStr | None = None
    """Server secret for keyed PII hashes and audit checkpoints (``SHIPWAY_SECRET_KEY``)."""
    secret_key_file: Path | None = None
    """A file holding the server secret (``SHIPWAY_SECRET_KEY_FILE``), e.g. a mounted secret."""
    api_key: SecretStr | None = None
    """The CLI's credential (``SHIPWAY_API_KEY``): state-changing commands check its role."""

    @field_validator("database_url", "secret_key", "api_key", "secret_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("dev_mode", mode="before")
    @classmethod
    def _empty_is_off(cls, v: object) -> object:
        return False if v == "" else v

    def secret(self) -> bytes:
        """The server secret. Outside development mode it must be set and not a default."""
        value: str | None = None
        if self.secret_key is not None:
            value = self.secret_key.get_secret_value()
        elif self.secret_key_file is not None:
            try:
                value = self.secret_key_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read SHIPWAY_SECRET_KEY_FILE {self.secret_key_file}: {exc.strerror}"
                ) from None
        if value is None:
            if self.dev_mode:
                return _DEV_SECRET
            raise ConfigError(
                "no server secret: set SHIPWAY_SECRET_KEY or SHIPWAY_SECRET_KEY_FILE "
                "(at least 16 characters), or run in development mode (--dev)"
            )
        weak = secret_weakness(value)
        if weak is not None:
            if self.dev_mode:
                return value.encode()
            raise ConfigError(
                f"the server secret is too weak ({weak}); refusing to start outside development "
                'mode. Make one with: python -c "import secrets; print(secrets.token_hex(32))"'
            )
        return value.encode()

    log_level: str = "info"
    actor: str | None = None
    """Who the CLI acts as in audit records; defaults to the operating-system user."""


__all__ = ["Settings"]
