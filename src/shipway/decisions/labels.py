"""Labels: ground truth for logged decisions, from callers, reviewers or files.

Labels live with the decisions they describe (table ``feedback``, owned here). A label must
belong to a decision of this service and fit the output spec (one of the labels, or a finite
number for regression). A second label for the same decision is a new revision; earlier ones
are kept. A batch with any bad item is refused whole, every problem named.

:func:`record` takes a connection, so a review outcome, its audit event and its label commit
in one transaction.

Labels carry who gave them, with which role, and a rank: a reviewer's outcome
(:data:`RANK_REVIEW`) outranks a label from someone whose job is labelling
(:data:`RANK_LABELER`), which outranks a caller's own feedback (:data:`RANK_CALLER`); the
label that counts is the newest of the highest rank, so a caller cannot overwrite a reviewer.
A caller may label only the decisions its own requests made (``owner``).

Labels usually arrive keyed by a business id rather than by decision id: an item
``{"key": ..., "label": ...}`` is joined on the contract's first ``role: id`` field (its
:class:`KeyJoin`): the key names the newest decision of the service logged since the join's
``since`` (30 days back unless the caller says otherwise) that carries that value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, func, insert, select

from shipway.decisions import queries
from shipway.decisions.records import key_text
from shipway.errors import FeedbackInvalid, InputError
from shipway.manifest import OutputSpec
from shipway.store.tables import feedback


def label_problem(label: Any, output: OutputSpec) -> str | None:
    """None when ``label`` fits the output spec, else what was expected."""
    if output.kind == "classification":
        labels = output.labels or []
        if label in labels and not (isinstance(label, bool) and True not in labels):
            return None
        # labels read from a CSV arrive as text: accept "1" for 1
        if isinstance(label, str) and any(str(x) == label for x in labels):
            return None
        return f"one of {labels}"
    if isinstance(label, bool) or not isinstance(label, int | float) or not math.isfinite(label):
        return "a finite number"
    return None


def normalise_label(label: Any, output: OutputSpec) -> Any:
    if output.kind == "classification" and isinstance(label, str):
        for x in output.labels or []:
            if str(x) == label:
                return x
    return label


#: How far back a label given by key looks for the decision it belongs to, by default.
KEY_WINDOW_S = 30 * 86400.0


@dataclass(frozen=True)
class KeyJoin:
    """How labels given by ``key`` find their decision: the id field whose value the log
    keeps as the key, how a raw value becomes the stored one (a keyed hash for a ``hash``
    personal field), and the earliest decision time that counts."""

    field: str | None
    treat: Callable[[Any], Any] | None = None
    since: float = 0.0
    refused: str | None = None
    """Why keys cannot be joined for this service (no id field, a masked id), if so."""


def _resolve_keys(
    conn: Connection,
    service: str,
    items: list[Any],
    join: KeyJoin | None,
    owner: str | None = None,
) -> list[dict[str, Any]]:
    """Give every ``{"key", "label"}`` item the id of its decision (in place); problems for
    keys that name none. With ``owner``, only decisions that caller made are looked at."""
    wanted = [(i, it) for i, it in enumerate(items) if isinstance(it, dict) and "key" in it]
    if not wanted:
        return []
    if join is None or join.field is None or join.refused:
        why = (join.refused if join is not None else None) or (
            "the contract has no role: id field to join labels on"
        )
        raise InputError(f"labels given by key cannot be joined: {why}")
    stored: dict[int, str] = {}
    for i, it in wanted:
        raw = key_text(it["key"])  # as the log keeps it: "42" for 42.0, no NUL, 128 chars
        if raw is not None:
            treated = key_text(join.treat(raw) if join.treat is not None else raw)
            if treated is not None:
                stored[i] = treated
    found = queries.latest_by_key(conn, service, stored.values(), join.since, caller=owner)
    problems = []
    for i, it in wanted:
        did = found.get(stored.get(i, ""))
        if did is None:
            it["_unmatched"] = True
            problems.append(
                {
                    "row": i,
                    "field": "key",
                    "rule": "unknown_key",
                    "value": it["key"],
                    "expected": f"the {join.field} of a decision of {service} logged since "
                    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(join.since))}",
                }
            )
        else:
            it["id"] = did
    return problems


def _problems(items: Sequence[Any], output: OutputSpec) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    for i, it in enumerate(items):
        if isinstance(it, dict) and it.get("_unmatched"):
            continue
        if not isinstance(it, dict) or "id" not in it or "label" not in it:
            problems.append(
                {
                    "row": i,
                    "field": None,
                    "rule": "shape",
                    "value": None,
                    "expected": 'an object {"id": ..., "label": ...} or {"key": ..., "label": ...}',
                }
            )
            continue
        why = label_problem(it["label"], output)
        if why is not None:
            problems.append(
                {
                    "row": i,
                    "field": "label",
                    "rule": "output_spec",
                    "value": it["label"],
                    "expected": why,
                }
            )
    return problems


#: Label ranks: the newest label of the highest rank is the one that counts.
RANK_CALLER, RANK_LABELER, RANK_REVIEW = 1, 2, 3


def record(
    conn: Connection,
    service: str,
    output: OutputSpec,
    items: Sequence[Any],
    *,
    actor: str,
    source: str = "api",
    rank: int = RANK_CALLER,
    role: str | None = None,
    owner: str | None = None,
    join: KeyJoin | None = None,
    skip_unmatched: bool = False,
) -> list[dict[str, Any]]:
    """Store labels in ``conn``'s transaction; returns ``[{"id", "revision"}]`` in order
    (with ``key`` for items given by key).

    With ``owner``, only decisions whose caller is ``owner`` may be labelled. Items given by
    ``key`` are joined as ``join`` says; with ``skip_unmatched``, keys that name no decision
    are left out (and counted by the caller) instead of refusing the batch. Raises
    :class:`FeedbackInvalid` (nothing stored) when any item is bad.
    """
    if not items:
        raise InputError("no feedback given")
    items = [dict(it) if isinstance(it, dict) else it for it in items]
    key_problems = _resolve_keys(conn, service, items, join, owner)
    if skip_unmatched and key_problems:
        key_problems = []  # unmatched items stay in place (rows keep their numbers), unstored
        if all(isinstance(it, dict) and it.get("_unmatched") for it in items):
            return []
    problems = key_problems + _problems(items, output)
    ids = [
        str(it["id"])
        for it in items
        if isinstance(it, dict) and "id" in it and not it.get("_unmatched")
    ]
    known = queries.known_ids(conn, service, ids)
    callers = queries.callers(conn, known) if owner is not None else {}
    for i, it in enumerate(items):
        if not (isinstance(it, dict) and "id" in it) or it.get("_unmatched"):
            continue
        did = str(it["id"])
        if did not in known:
            problems.append(
                {
                    "row": i,
                    "field": "id",
                    "rule": "unknown_decision",
                    "value": it["id"],
                    "expected": f"a decision id of {service}",
                }
            )
        elif owner is not None and callers.get(did) != owner:
            problems.append(
                {
                    "row": i,
                    "field": "id",
                    "rule": "not_yours",
                    "value": it["id"],
                    "expected": "a decision your own requests made (labelling any decision "
                    "needs the labeler or reviewer role)",
                }
            )
    if problems:
        problems.sort(key=lambda p: p["row"])
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FeedbackInvalid(
            f"feedback row {first['row']}: {first['field']} breaks {first['rule']!r}: expected "
            f"{first['expected']}{more}; nothing was stored",
            problems,
        )
    now = time.time()
    current = dict(
        conn.execute(
            select(feedback.c.decision_id, func.max(feedback.c.revision))
            .where(feedback.c.decision_id.in_(ids))
            .group_by(feedback.c.decision_id)
        ).all()
    )
    rows, out = [], []
    for it in items:
        if it.get("_unmatched"):
            continue
        did = str(it["id"])
        rev = int(current.get(did) or 0) + 1
        current[did] = rev
        rows.append(
            {
                "decision_id": did,
                "service": service,
                "revision": rev,
                "ts": now,
                "label": orjson.dumps(normalise_label(it["label"], output)).decode(),
                "actor": actor,
                "source": source,
                "rank": rank,
                "role": role,
            }
        )
        out.append({"id": did, "revision": rev, **({"key": it["key"]} if "key" in it else {})})
    conn.execute(insert(feedback), rows)
    return out


def record_feedback(
    engine: Engine,
    service: str,
    output: OutputSpec,
    items: Sequence[Any],
    *,
    actor: str,
    source: str = "api",
    rank: int = RANK_CALLER,
    role: str | None = None,
    owner: str | None = None,
    join: KeyJoin | None = None,
    skip_unmatched: bool = False,
) -> list[dict[str, Any]]:
    """:func:`record` in a transaction of its own."""
    with engine.begin() as conn:
        return record(
            conn,
            service,
            output,
            items,
            actor=actor,
            source=source,
            rank=rank,
            role=role,
            owner=owner,
            join=join,
            skip_unmatched=skip_unmatched,
        )


def latest(engine: Engine, ids: Iterable[str]) -> dict[str, Any]:
    """The label that counts for each decision that has one: the newest of the highest rank."""
    ids = list(ids)
    out: dict[str, tuple[tuple[int, int], str]] = {}
    with engine.connect() as conn:
        for k in range(0, len(ids), 1000):
            chunk = ids[k : k + 1000]
            for did, rank, rev, label in conn.execute(
                select(
                    feedback.c.decision_id, feedback.c.rank, feedback.c.revision, feedback.c.label
                ).where(feedback.c.decision_id.in_(chunk))
            ):
                key = (int(rank), int(rev))
                if did not in out or key > out[did][0]:
                    out[did] = (key, label)
    return {k: orjson.loads(v[1]) for k, v in out.items()}


def labelled(
    engine: Engine, service: str, since: float, limit: int | None = None
) -> list[dict[str, Any]]:
    """Answered decisions since ``since`` that have a label, newest first (at most ``limit``),
    each with its inputs as logged, its time and the label that counts: the rows a retrain
    learns from, with the features exactly as they were served."""
    labelled_ids = select(feedback.c.decision_id).where(feedback.c.service == service)
    rows = queries.answered_among(engine, service, since, labelled_ids, limit)
    truth = latest(engine, [r["id"] for r in rows])
    for r in rows:
        r["label"] = truth.get(r["id"])
    return [r for r in rows if r["label"] is not None]


def read_file(path: Path, key: str | None = None) -> list[dict[str, Any]]:
    """Labels from CSV or Parquet: columns ``id`` and ``label``, or, with ``key``, the column
    of that name (a business id) and ``label``."""
    import pandas as pd

    if not path.exists():
        raise InputError(f"feedback file {path} does not exist")
    col = key or "id"
    if path.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, dtype={col: str})
    missing = [c for c in (col, "label") if c not in frame.columns]
    if missing:
        raise InputError(f"{path.name} needs the columns {col} and label (missing: {missing})")
    out = []
    for rec in frame[[col, "label"]].to_dict("records"):
        label = rec["label"]
        if hasattr(label, "item"):
            label = label.item()
        value = rec[col]
        if hasattr(value, "item"):
            value = value.item()
        out.append({"key" if key else "id": str(value), "label": label})
    return out


__all__ = [
    "KEY_WINDOW_S",
    "RANK_CALLER",
    "RANK_LABELER",
    "RANK_REVIEW",
    "KeyJoin",
    "label_problem",
    "labelled",
    "latest",
    "normalise_label",
    "read_file",
    "record",
    "record_feedback",
]
