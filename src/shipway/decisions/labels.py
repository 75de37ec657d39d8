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
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, func, insert, select

from shipway.decisions import queries
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


def _problems(items: Sequence[Any], output: OutputSpec) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "id" not in it or "label" not in it:
            problems.append(
                {
                    "row": i,
                    "field": None,
                    "rule": "shape",
                    "value": None,
                    "expected": 'an object {"id": ..., "label": ...}',
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
) -> list[dict[str, Any]]:
    """Store labels in ``conn``'s transaction; returns ``[{"id", "revision"}]`` in order.

    With ``owner``, only decisions whose caller is ``owner`` may be labelled. Raises
    :class:`FeedbackInvalid` (nothing stored) when any item is bad.
    """
    if not items:
        raise InputError("no feedback given")
    problems = _problems(items, output)
    ids = [str(it["id"]) for it in items if isinstance(it, dict) and "id" in it]
    known = queries.known_ids(conn, service, ids)
    callers = queries.callers(conn, known) if owner is not None else {}
    for i, it in enumerate(items):
        if not (isinstance(it, dict) and "id" in it):
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
        )
        .tuples()
        .all()
    )
    rows, out = [], []
    for it in items:
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
        out.append({"id": did, "revision": rev})
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


def read_file(path: Path) -> list[dict[str, Any]]:
    """``id`` and ``label`` columns from CSV or Parquet."""
    import pandas as pd

    if not path.exists():
        raise InputError(f"feedback file {path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, dtype={"id": str})
    missing = [c for c in ("id", "label") if c not in frame.columns]
    if missing:
        raise InputError(f"{path.name} needs the columns id and label (missing: {missing})")
    out = []
    for rec in frame[["id", "label"]].to_dict("records"):
        label = rec["label"]
        if hasattr(label, "item"):
            label = label.item()
        out.append({"id": str(rec["id"]), "label": label})
    return out


__all__ = [
    "RANK_CALLER",
    "RANK_LABELER",
    "RANK_REVIEW",
    "label_problem",
    "latest",
    "normalise_label",
    "read_file",
    "record",
    "record_feedback",
]
