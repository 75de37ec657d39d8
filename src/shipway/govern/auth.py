"""Authentication: API keys (from the in-memory key ring) and OIDC bearer tokens (PyJWT).

``Authorization: Bearer <credential>`` or ``X-API-Key: <key>``. A credential that looks like a
Shipway key (``sw_...``) is checked against the key ring; anything else is verified as a JWT:
signature against the provider's JWKS (a file, or a URL fetched and cached), issuer, audience,
expiry. Roles come from a configurable claim.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
import orjson

from shipway.errors import ConfigError, Unauthorized
from shipway.govern.keys import KeyRing
from shipway.govern.roles import ROLES, Principal
from shipway.manifest import OidcSpec


def _claim(claims: dict[str, Any], path: str) -> Any:
    cur: Any = claims
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


class OidcVerifier:
    def __init__(self, spec: OidcSpec) -> None:
        self.spec = spec
        self._client: jwt.PyJWKClient | None = None
        self._set: jwt.PyJWKSet | None = None
        self._lock = threading.Lock()
        if spec.jwks.startswith(("http://", "https://")):
            self._client = jwt.PyJWKClient(spec.jwks, cache_keys=True, lifespan=300)
        else:
            path = Path(spec.jwks)
            try:
                self._set = jwt.PyJWKSet.from_dict(orjson.loads(path.read_bytes()))
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise ConfigError(
                    f"auth.oidc.jwks: cannot read a key set from {path}: {exc}"
                ) from None

    def _key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._set is not None
        kid = jwt.get_unverified_header(token).get("kid")
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
        values = raw.split() if isinstance(raw, str) else list(raw or [])
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


__all__ = ["Authenticator", "OidcVerifier"]
