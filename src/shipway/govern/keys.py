"""API keys: created once (the secret is shown once), stored as a hash, listed without secrets,
rotated and revoked; every change is an audit event.

A key looks like ``sw_<id>_<secret>``. The id finds the row; the secret is checked against its
sha256 with a constant-time compare (keys are 256-bit random, so a fast hash is enough).
Servers keep every key in memory (:class:`KeyRing`) and reload when the audit chain's head
moves, which every key change does: checking a known key costs no database round trip, and a
revocation reaches every server within one poll interval (at once on the server that
revoked it). An unknown key id looks at the store at most every ``MISS_CHECK_S``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, select, update

from shipway.errors import InputError, NotFound
from shipway.govern import audit
from shipway.govern.roles import ROLES, Principal
from shipway.store.tables import api_keys

#: How often an unknown key id may trigger a look at the store (seconds).
MISS_CHECK_S = 0.1
#: Verified credentials remembered at most (only valid keys are remembered).
MAX_VERIFIED = 10_000
_KEY = re.compile(r"^sw_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    role: str
    created_at: float
    created_by: str
    expires_at: float | None
    revoked_at: float | None

    @property
    def active(self) -> bool:
        unexpired = self.expires_at is None or self.expires_at > time.time()
        return self.revoked_at is None and unexpired

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "active": self.active,
        }


def _info(row: Any) -> KeyInfo:
    return KeyInfo(
        row["id"],
        row["name"],
        row["role"],
        row["created_at"],
        row["created_by"],
        row["expires_at"],
        row["revoked_at"],
    )


class Keys:
    """Key management on the store (CLI and admin routes)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self,
        *,
        name: str,
        role: str,
        actor: str,
        expires_in: float | None = None,
        reason: str = "",
    ) -> tuple[KeyInfo, str]:
        if role not in ROLES:
            raise InputError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        if not name.strip():
            raise InputError("a key needs a name")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = time.time()
        row = {
            "id": key_id,
            "name": name,
            "role": role,
            "secret_sha256": _digest(secret),
            "created_at": now,
            "created_by": actor,
            "expires_at": now + expires_in if expires_in else None,
            "revoked_at": None,
            "revoked_by": None,
        }
        with self.engine.begin() as conn:
            conn.execute(insert(api_keys).values(**row))
            audit.append(
                conn,
                actor=actor,
                action="key.create",
                target=f"key:{key_id}",
                after={"name": name, "role": role, "expires_at": row["expires_at"]},
                reason=reason,
            )
        return _info(row), f"sw_{key_id}_{secret}"

    def list(self) -> list[KeyInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).mappings()
            return [_info(r) for r in rows]

    def get(self, key_id: str) -> KeyInfo:
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}")
        return _info(row)

    def revoke(self, key_id: str, *, actor: str, reason: str = "") -> KeyInfo:
        info = self.get(key_id)
        if info.revoked_at is not None:
            return info
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id)
                .values(revoked_at=now, revoked_by=actor)
            )
            audit.append(
                conn,
                actor=actor,
                action="key.revoke",
                target=f"key:{key_id}",
                before={"name": info.name, "role": info.role, "active": True},
                after={"active": False},
                reason=reason,
            )
        return self.get(key_id)

    def rotate(self, key_id: str, *, actor: str, reason: str = "") -> tuple[KeyInfo, str]:
        """A new key with the same name, role and lifetime; the old one is revoked."""
        old = self.get(key_id)
        if old.revoked_at is not None:
            raise InputError(f"key {key_id} is revoked; create a new one instead")
        life = (old.expires_at - old.created_at) if old.expires_at else None
        new, secret = self.create(
            name=old.name,
            role=old.role,
            actor=actor,
            expires_in=life,
            reason=reason or f"rotation of {key_id}",
        )
        self.revoke(key_id, actor=actor, reason=reason or f"rotated to {new.id}")
        return new, secret

    def count(self) -> int:
        return len(self.list())


class KeyRing:
    """Every key in memory, for checking keys on the request path without the database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._by_id: dict[str, tuple[str, str, str, float | None, bool]] = {}
        self._lock = threading.Lock()
        self.loaded_at_seq = -1
        self._last_miss_check = 0.0
        # Credentials already checked against their digest: the exact token string maps to its
        # principal and expiry, so a known key costs one dict lookup per request. Emptied
        # whenever the ring changes (reload, forget), so a revocation is never outlived.
        self._verified: dict[str, tuple[Principal, float | None]] = {}

    def reload(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys)).mappings().all()
        table = {
            r["id"]: (
                r["secret_sha256"],
                r["role"],
                r["name"],
                r["expires_at"],
                r["revoked_at"] is not None,
            )
            for r in rows
        }
        with self._lock:
            self._by_id = table
            self._verified = {}

    def refresh_if_changed(self) -> bool:
        seq, _h = audit.head(self.engine)
        if seq == self.loaded_at_seq:
            return False
        self.reload()
        self.loaded_at_seq = seq
        return True

    def check(self, token: str) -> Principal | None:
        """The key's principal, or None when it is unknown, wrong, expired or revoked."""
        hit = self._verified.get(token)
        if hit is not None:
            principal, expires_at = hit
            if expires_at is None or expires_at > time.time():
                return principal
        m = _KEY.match(token)
        if m is None:
            return None
        entry = self._by_id.get(m.group(1))
        if entry is None:
            # A key made a moment ago elsewhere: look once (at most every MISS_CHECK_S, so
            # guessed ids cannot turn into a database query per request).
            now = time.monotonic()
            if now - self._last_miss_check < MISS_CHECK_S:
                return None
            self._last_miss_check = now
            self.refresh_if_changed()
            entry = self._by_id.get(m.group(1))
            if entry is None:
                return None
        digest, role, name, expires_at, revoked = entry
        if not hmac.compare_digest(digest, _digest(m.group(2))):
            return None
        if revoked or (expires_at is not None and expires_at <= time.time()):
            return None
        principal = Principal(name, frozenset({role}), kind="key", key_id=m.group(1))
        verified = self._verified
        if len(verified) < MAX_VERIFIED:
            verified[token] = (principal, expires_at)
        return principal

    def forget(self, key_id: str) -> None:
        """Drop a key at once (this server revoked it; others learn it on their next poll)."""
        with self._lock:
            self._by_id.pop(key_id, None)
            self._verified = {}


__all__ = ["KeyInfo", "KeyRing", "Keys"]
