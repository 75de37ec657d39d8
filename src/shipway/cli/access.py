"""Who the CLI acts as, and whether that identity may change this state.

* Development mode (``SHIPWAY_DEV_MODE=1``): the operating-system user, with every role.
* ``SHIPWAY_API_KEY`` set: that key's name and role, checked against the store.
* Neither, and the store has no API key yet: the operating-system user (bootstrapping: the
  first thing to do is ``shipway keys create --role admin``).
* Neither, and keys exist: refused, naming the role the command needs.
"""

from __future__ import annotations

import getpass

from shipway.errors import Forbidden, Unauthorized
from shipway.govern.keys import KeyRing, Keys
from shipway.govern.roles import ROLES, Principal
from shipway.settings import Settings
from shipway.store import Store


def cli_principal(store: Store, settings: Settings, permission: str, what: str) -> Principal:
    if settings.dev_mode:
        return Principal(settings.actor or getpass.getuser(), frozenset({"admin"}), kind="dev")
    needs = ", ".join(r for r, p in ROLES.items() if permission in p)
    if settings.api_key is not None:
        ring = KeyRing(store.engine)
        ring.reload()
        p = ring.check(settings.api_key.get_secret_value())
        if p is None:
            raise Unauthorized("SHIPWAY_API_KEY is not a valid key (unknown, revoked or expired)")
        if not p.can(permission):
            raise Forbidden(
                f"{what} needs one of the roles {needs}; key {p.name!r} has role "
                f"{next(iter(p.roles))}"
            )
        return p
    if Keys(store.engine).count() == 0:
        return Principal(settings.actor or getpass.getuser(), frozenset({"admin"}), kind="local")
    raise Unauthorized(
        f"{what} changes state: set SHIPWAY_API_KEY to a key with one of the roles {needs}"
    )


__all__ = ["cli_principal"]
