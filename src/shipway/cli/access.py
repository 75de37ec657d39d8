"""Who the CLI acts as, and whether that identity may change this state.

* Development mode (``SHIPWAY_DEV_MODE=1``): the operating-system user, with every role.
* ``SHIPWAY_API_KEY`` set: that key's name and role, checked against the store, for every
  command that reads or changes state, exactly as the HTTP routes check it.
* Neither, and the store has no API key yet: the operating-system user (bootstrapping: the
  first thing to do is ``shipway keys create --role admin``).
* Neither, and keys exist: commands that change state are refused, naming the role they need;
  commands that only read (``decisions export``, ``audit list``) act as the local user.

These checks are advisory against someone who can open the store: whoever can read the
database file or connect to PostgreSQL with the service's credentials can read and change
everything without the CLI. A person with database access is trusted like an admin; keys and
roles protect the HTTP API, and make the CLI say who did what.
"""

from __future__ import annotations

import getpass

from shipway.errors import Forbidden, Unauthorized
from shipway.govern.keys import KeyRing, Keys
from shipway.govern.roles import ROLES, Principal
from shipway.settings import Settings
from shipway.store import Store


def cli_principal(
    store: Store, settings: Settings, permission: str, what: str, *, reads_only: bool = False
) -> Principal:
    """The CLI's principal for a command needing ``permission`` (see the module's rules)."""
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
    if reads_only or Keys(store.engine).count() == 0:
        return Principal(settings.actor or getpass.getuser(), frozenset({"admin"}), kind="local")
    raise Unauthorized(
        f"{what} changes state: set SHIPWAY_API_KEY to a key with one of the roles {needs}"
    )


__all__ = ["cli_principal"]
