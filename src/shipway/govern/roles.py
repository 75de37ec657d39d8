"""Roles and what each may do. One table, read by the HTTP face and the CLI alike."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Permissions, from least to most consequential.
READ = "read"  # services, models, rollout, monitors, audit; decisions without raw inputs
READ_INPUTS = "read_inputs"  # decisions with their (redacted) inputs
PREDICT = "predict"  # predict and feedback
REVIEW = "review"  # work the review queue
OPERATE = "operate"  # rollout moves other than promotion, alerts, retention purge
APPROVE = "approve"  # promote to champion, force past a failed gate, stop and resume
ADMIN = "admin"  # keys, policies

PERMISSIONS = (READ, READ_INPUTS, PREDICT, REVIEW, OPERATE, APPROVE, ADMIN)

ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({READ}),
    "predictor": frozenset({PREDICT}),
    "reviewer": frozenset({READ, READ_INPUTS, REVIEW}),
    "operator": frozenset({READ, READ_INPUTS, OPERATE}),
    "approver": frozenset({READ, READ_INPUTS, OPERATE, APPROVE}),
    "admin": frozenset(PERMISSIONS),
}

ROLE_HELP = {
    "viewer": "read monitors, models, rollout and decisions (without raw inputs)",
    "predictor": "call predict and feedback",
    "reviewer": "work the review queue; read decisions with inputs",
    "operator": "rollout moves (not promotion), alerts, retention; read everything",
    "approver": "promote to champion, force past a failed gate, stop and resume",
    "admin": "everything, including API keys and policies",
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's name or a token's subject, and the roles it holds."""

    name: str
    roles: frozenset[str]
    kind: str = "key"  # key, jwt, dev, local
    key_id: str | None = None
    permissions: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        perms: set[str] = set()
        for r in self.roles:
            perms |= ROLES.get(r, frozenset())
        object.__setattr__(self, "permissions", frozenset(perms))

    def can(self, permission: str) -> bool:
        return permission in self.permissions


DEV = Principal("development", frozenset({"admin"}), kind="dev")

__all__ = [
    "ADMIN",
    "APPROVE",
    "DEV",
    "OPERATE",
    "PERMISSIONS",
    "PREDICT",
    "READ",
    "READ_INPUTS",
    "REVIEW",
    "ROLES",
    "ROLE_HELP",
    "Principal",
]
