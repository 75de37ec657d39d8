"""Authentication: API keys (from the in-memory key ring) and OIDC bearer tokens (PyJWT).

``Authorization: Bearer <credential>`` or ``X-API-Key: <key>``. A credential that looks like a
Shipway key (``sw_...``) is checked against the key ring; anything else is verified as a JWT:
signature against the provider's JWKS (a file, or a URL fetched and cached), issuer, audience,
expiry. Roles come from a configurable claim.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from shipway.errors import ConfigError, Unauthorized
from shipway.govern.keys import KeyRing
from shipway.govern.roles import ROLES, Principal
from shipway.manifest import OidcSpec

log = logging.getLogger("shipway.auth")


def _claim(claims: dict[str, Any], path: str) -> Any:
    cur: Any = claims
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


class JwksUrl:
    """A provider's key set fetched from a URL, never on the request path.

    The set is fetched when the server starts and again every ``jwks_refresh`` by the
    scheduler (:meth:`maintain`); each fetch replaces the whole set, so a key the provider
    removed is refused from then on. A token naming a key the set lacks is refused at once and
    asks for an early fetch, at most every ``jwks_min_interval``; a failing provider is retried
    with backoff. Looking a key up is a dictionary read.
    """

    def __init__(self, spec: OidcSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = spec.jwks
        self.refresh_s = spec.jwks_refresh.seconds
        self.min_interval_s = spec.jwks_min_interval.seconds
        self.timeout_s = spec.jwks_timeout_s
        self._clock = clock
        self._keys: dict[str | None, Any] = {}
        self.fetched_at: float | None = None
        self.last_try = -math.inf
        self.failures = 0
        self.last_error: str | None = None
        self._wanted = False
        self._lock = threading.Lock()

    def key(self, kid: str | None) -> Any:
        keys = self._keys
        if kid is None and len(keys) == 1:
            return next(iter(keys.values()))
        found = keys.get(kid)
        if found is None:
            self._wanted = True  # an early fetch, by maintain() (never here)
            if not keys:
                raise Unauthorized("the identity provider's keys are not available yet")
            raise Unauthorized(f"the token was signed with an unknown key ({kid})")
        return found

    def due(self) -> bool:
        now = self._clock()
        wait = self.min_interval_s
        if self.failures:
            wait = max(wait, min(300.0, 2.0**self.failures))
        if now - self.last_try < wait:
            return False
        if self.fetched_at is None or self._wanted:
            return True
        return now - self.fetched_at >= self.refresh_s

    def maintain(self) -> bool:
        """Fetch the set if it is due (the scheduler's ``jwks`` task); True when fetched."""
        if not self.due():
            return False
        return self.fetch()

    def fetch(self) -> bool:
        with self._lock:
            self.last_try = self._clock()
            self._wanted = False
            try:
                r = httpx.get(self.url, timeout=self.timeout_s)
                r.raise_for_status()
                keyset = jwt.PyJWKSet.from_dict(r.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning(
                    "JWKS fetch from %s failed (%s); retrying with backoff",
                    self.url,
                    self.last_error,
                )
                return False
            self._keys = {k.key_id: k.key for k in keyset.keys}
            self.fetched_at = self._clock()
            self.failures = 0
            self.last_error = None
            return True


class OidcVerifier:
    def __init__(self, spec: OidcSpec) -> None:
        self.spec = spec
        self.remote: JwksUrl | None = None
        self._set: jwt.PyJWKSet | None = None
        if spec.jwks.startswith(("http://", "https://")):
            self.remote = JwksUrl(spec)
            self.remote.fetch()  # at start; a provider that is down is retried in background
        else:
            path = Path(spec.jwks)
            try:
                self._set = jwt.PyJWKSet.from_dict(orjson.loads(path.read_bytes()))
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise ConfigError(
                    f"auth.oidc.jwks: cannot read a key set from {path}: {exc}"
                ) from None

    def _key(self, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the token is not valid: {exc}") from None
        if self.remote is not None:
            return self.remote.key(kid)
        assert self._set is not None
        keys = self._set.keys
        if kid is None:
            if len(keys) == 1:
                return keys[0].key
            raise Unauthorized("the token names no key (kid) and the key set has several")
        for k in keys:
            if k.key_id == kid:
                return k.key
        raise Unauthorized(f"the token was signed with an unknown key ({kid})")

    def verify(self, token: str) -> Principal:
        spec = self.spec
        try:
            claims = jwt.decode(
                token,
                self._key(token),
                algorithms=spec.algorithms,
                audience=spec.audience,
                issuer=spec.issuer,
                leeway=spec.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"the token is not for this audience ({spec.audience})") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(
                f"the token is not from the accepted issuer ({spec.issuer})"
            ) from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the token is not valid: {exc}") from None
        raw = _claim(claims, spec.roles_claim)
        if raw is None:
            values: list[Any] = []
        elif isinstance(raw, str):
            values = raw.split()
        elif isinstance(raw, list):
            values = [v for v in raw if isinstance(v, str)]
        else:
            raise Unauthorized(
                f"the token's {spec.roles_claim!r} claim must be a string or a list of roles"
            )
        roles = {spec.role_map.get(str(v), str(v)) for v in values}
        roles &= set(ROLES)
        return Principal(str(claims.get("sub") or "token"), frozenset(roles), kind="jwt")


class Authenticator:
    def __init__(self, keys: KeyRing, oidc: OidcSpec | None) -> None:
        self.keys = keys
        self.oidc = OidcVerifier(oidc) if oidc is not None else None

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller's principal, or :class:`Unauthorized` naming what is wrong."""
        cred = headers.get("x-api-key")
        if cred is None:
            auth = headers.get("authorization")
            if auth is None:
                raise Unauthorized(
                    "credentials are required: send 'Authorization: Bearer <key or token>'"
                )
            scheme, _, cred = auth.partition(" ")
            if scheme.lower() != "bearer" or not cred.strip():
                raise Unauthorized("the Authorization header must be 'Bearer <key or token>'")
            cred = cred.strip()
        if cred.startswith("sw_"):
            p = self.keys.check(cred)
            if p is None:
                raise Unauthorized("the API key is not valid (unknown, revoked or expired)")
            return p
        if self.oidc is None:
            raise Unauthorized("the API key is not valid (unknown, revoked or expired)")
        return self.oidc.verify(cred)


__all__ = ["Authenticator", "JwksUrl", "OidcVerifier"]
