"""``shipway review``: work the review queue from the terminal (for small teams)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer

from shipway.cli.access import cli_principal
from shipway.cli.lifecycle import ManifestArg, _opened, err, out
from shipway.govern.roles import REVIEW
from shipway.settings import Settings

HELP = "[a]pprove, [o]verride, [e]scalate, [q]uit"


def _shown(v: object) -> str:
    """A value as JSON writes it (null, true), as reviewers read values in the API."""
    return orjson.dumps(v).decode() if v is None or isinstance(v, bool) else str(v)


def register(app: typer.Typer) -> None:
    app.command("review")(review)


def review(
    manifest: ManifestArg = Path("shipway.yaml"),
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    limit: Annotated[int, typer.Option(help="Stop after this many items (0: until empty).")] = 0,
) -> None:
    """Claim items one by one, show the decision, and record your outcome.

    Each item shows the inputs (as logged, after PII treatment), the model's answer, its
    confidence and version. Approve keeps the answer; override asks for the right one (checked
    against the output spec); escalate sends it to the escalated queue. Every outcome becomes
    a feedback label (approve, override) and an audit event.
    """
    done = 0
    with _opened(manifest) as parts:
        reviewer = cli_principal(parts.store, Settings(), REVIEW, "review").actor
        q = parts.review
        while limit == 0 or done < limit:
            item = q.claim(reviewer, queue)
            if item is None:
                out.print("The queue is empty.")
                break
            out.print(
                f"\n[bold]item {item['id']}[/] (policy {item['policy']}, queue "
                f"{item['queue']}, priority {item['priority']})"
            )
            for k, v in item["inputs"].items():
                out.print(f"  {k}: {_shown(v)}", highlight=False)
            out.print(
                f"  model v{_shown(item['model_version'])} answered "
                f"[bold]{_shown(item['output'])}[/] with confidence {_shown(item['confidence'])}",
                highlight=False,
            )
            choice = typer.prompt(HELP, default="a").strip().lower()[:1]
            if choice == "q":
                break
            if choice not in ("a", "o", "e"):
                err.print(f"unknown choice {choice!r}; the claim expires and the item returns")
                continue
            output = None
            if choice == "o":
                raw = typer.prompt("the right output")
                try:
                    output = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    output = raw
            reason = typer.prompt("reason", default="")
            action = {"a": "approve", "o": "override", "e": "escalate"}[choice]
            q.decide(item["id"], reviewer, action, output=output, reason=reason)
            out.print(f"  recorded: {action}")
            done += 1
    out.print(f"{done} reviewed")
