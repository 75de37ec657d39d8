"""Roles and what each may do. One table, read by the HTTP face and the CLI alike."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Permissions, from least to most consequential.
READ = "read"  # services, models, rollout, monitors, audit; decisions without raw inputs
READ_INPUTS = "read_inputs"  # decisions with their (redacted) inputs
PREDICT = "predict"  # predict, and label the decisions one's own requests made
INGEST = "ingest"  # push rows to a data source (POST /v1/ingest/{source})
LABEL = "label"  # label any decision (ground truth from people who know it)
REVIEW = "review"  # work the review queue
OPERATE = "operate"  # rollout moves other than promotion, alerts, retention purge
APPROVE = "approve"  # promote to champion, force past a failed gate, stop and resume
ADMIN = "admin"  # keys, policies

PERMISSIONS = (READ, READ_INPUTS, PREDICT, INGEST, LABEL, REVIEW, OPERATE, APPROVE, ADMIN)

ROLES: dict[str, frozenset[str]] = {
    "viewer": frozenset({READ}),
    "predictor": frozenset({PREDICT}),
    "ingester": frozenset({INGEST}),
    "labeler": frozenset({READ, READ_INPUTS, LABEL}),
    "reviewer": frozenset({READ, READ_INPUTS, LABEL, REVIEW}),
    "operator": frozenset({READ, READ_INPUTS, OPERATE}),
    "approver": frozenset({READ, READ_INPUTS, OPERATE, APPROVE}),
    "admin": frozenset(PERMISSIONS),
}

ROLE_HELP = {
    "viewer": "read monitors, models, rollout and decisions (without raw inputs)",
    "predictor": "call predict; label the decisions its own requests made",
    "ingester": "push rows to the service's push sources (POST /v1/ingest/SOURCE)",
    "labeler": "label any decision (ground truth); read decisions with inputs",
    "reviewer": "work the review queue; read decisions with inputs",
    "operator": "rollout moves (not promotion), alerts, retention; read everything",
    "approver": "promote to champion, force past a failed gate, stop and resume",
    "admin": "everything, including API keys and policies",
}


#: How each kind of principal is named as an actor (audit events, decisions, labels): the
#: prefix says what kind of identity acted, so no key name or token subject can pass for
#: another kind, least of all for Shipway's own jobs (``system:``).
ACTOR_PREFIX = {"key": "key", "jwt": "oidc", "dev": "dev", "local": "cli"}


def system_actor(job: str) -> str:
    """The actor of work Shipway does by itself (retention, automatic steps, the monitor)."""
    return f"system:{job}"


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

    @property
    def actor(self) -> str:
        """How this principal is recorded: ``key:NAME``, ``oidc:SUBJECT``, ``cli:USER``..."""
        return f"{ACTOR_PREFIX.get(self.kind, self.kind)}:{self.name}"


DEV = Principal("development", frozenset({"admin"}), kind="dev")
#: Who calls an open route without credentials: no role at all.
ANONYMOUS = Principal("anonymous", frozenset(), kind="anonymous")

__all__ = [
    "ACTOR_PREFIX",
    "ADMIN",
    "ANONYMOUS",
    "APPROVE",
    "DEV",
    "INGEST",
    "LABEL",
    "OPERATE",
    "PERMISSIONS",
    "PREDICT",
    "READ",
    "READ_INPUTS",
    "REVIEW",
    "ROLES",
    "ROLE_HELP",
    "Principal",
    "system_actor",
]
