"""``shipway retrain`` and ``shipway jobs``: retrain now (or see what it would use), and read
the record, log and lineage of retrain jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from shipway.cli.access import cli_principal
from shipway.cli.lifecycle import ManifestArg, _opened, err, out, when
from shipway.errors import ShipwayError
from shipway.govern.roles import OPERATE, READ
from shipway.settings import Settings

jobs_app = typer.Typer(
    help="Retrain jobs: status, progress, candidate, gate result, lineage and log.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.command("retrain")(retrain)
    app.add_typer(jobs_app, name="jobs")


def retrain(
    manifest: ManifestArg = Path("shipway.yaml"),
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show the window and what would be fitted; train nothing."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Fit a candidate on the window of labelled decisions (training: in the manifest), gate
    it against the champion on the most recent part of the window, and promote it as
    training.promote says. Runs as a job in a process of its own; exit 1 unless it passed."""
    from shipway.lifecycle import training

    with _opened(manifest) as parts:
        actor = cli_principal(parts.store, Settings(), OPERATE, "retrain").actor
        spec = parts.manifest.training
        if spec is None:
            err.print(
                "[bold red]error:[/] the manifest has no training: section; add one to retrain "
                "(see the manifest reference)"
            )
            raise typer.Exit(1)
        if dry_run:
            try:
                pilot = training.pilot_rows(parts) if spec.include_pilot_data else None
                window = training.build_window(
                    parts.store.engine, parts.manifest, spec, time.time(), pilot
                )
            except ShipwayError as exc:
                err.print(f"[bold red]refused:[/] {exc.message}", highlight=False)
                raise typer.Exit(1) from None
            champion = parts.registry.get(parts.name, parts.champion_version())
            plan = {
                **window.summary(),
                "fit": spec.fit,
                "estimator": _estimator(parts, champion) if spec.fit == "clone" else spec.fit,
                "champion": champion.version,
                "promote": spec.promote,
            }
            if as_json:
                print(orjson.dumps(plan).decode())
                return
            out.print(
                f"would fit {plan['estimator']} on {plan['train_rows']} rows and judge it "
                f"beside v{champion.version} on the newest {plan['holdout_rows']} (from "
                f"{when(plan['holdout_from'])}); window: {plan['labelled_decisions']} labelled "
                f"decisions since {when(plan['since']) if plan['since'] else 'the start'}, "
                f"{plan['dataset_rows']} dataset rows; then: {spec.promote}",
                highlight=False,
            )
            return
        with err.status("Retrain: starting...") as status:

            def progress(line: str | None) -> None:
                if line:
                    status.update(f"Retrain: {line}")

            job = parts.retrain("cli", actor, wait=True, on_progress=progress)
    if as_json:
        print(orjson.dumps(job).decode())
    else:
        _print_job(job)
    if job["status"] != "ok":
        raise typer.Exit(1)


def _estimator(parts: Any, champion: Any) -> str:
    if champion.flavor != "sklearn":
        return f"(clone needs a scikit-learn champion; v{champion.version} is {champion.flavor})"
    from shipway.models.predictor import load_sklearn_bytes

    est = load_sklearn_bytes(parts.store.artifacts.read_verified(champion.artifact_sha256 or ""))
    steps = getattr(est, "steps", None)
    if steps:
        return "a clone of Pipeline(" + ", ".join(type(s).__name__ for _, s in steps) + ")"
    return f"a clone of {type(est).__name__}"


def _print_job(job: dict[str, Any]) -> None:
    out.print(
        f"job {job['id']}: {job['status']} ({job['trigger']}, {when(job['started_at'])}"
        + (f", {job['finished_at'] - job['started_at']:.1f} s" if job["finished_at"] else "")
        + ")",
        highlight=False,
    )
    if job["rows"] is not None:
        out.print(f"  window: {job['rows']} rows, {job['labels']} labelled decisions")
    if job["candidate"] is not None:
        out.print(f"  candidate: v{job['candidate']}")
    gate = job.get("gate") or {}
    for line in gate.get("checks", []):
        out.print(f"  [green]pass[/] {line}", highlight=False)
    for line in gate.get("reasons", []):
        out.print(f"  [red]fail[/] {line}", highlight=False)
    if job.get("progress"):
        out.print(f"  last step: {job['progress']}", highlight=False)
    if job.get("error"):
        out.print(f"  {job['error']}", highlight=False)


@jobs_app.command("list")
def jobs_list(
    manifest: ManifestArg = Path("shipway.yaml"),
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Retrain jobs, newest first."""
    from shipway.lifecycle import training

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ, "jobs list", reads_only=True)
        found = training.list_jobs(parts.store.engine, parts.name, limit)
    if as_json:
        print(orjson.dumps([{k: v for k, v in j.items() if k != "log"} for j in found]).decode())
        return
    t = Table(title="retrain jobs")
    for col in ("id", "started", "trigger", "status", "rows", "candidate", "error"):
        t.add_column(col)
    for j in found:
        cand = f"v{j['candidate']}" if j["candidate"] else ""
        rows = str(j["rows"] or "")
        started = when(j["started_at"])
        t.add_row(j["id"], started, j["trigger"], j["status"], rows, cand, (j["error"] or "")[:60])
    out.print(t)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job (shipway jobs list).")],
    manifest: ManifestArg = Path("shipway.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One job: status, window, candidate, gate checks and lineage."""
    from shipway.lifecycle import training

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ, "jobs show", reads_only=True)
        job = training.get_job(parts.store.engine, job_id)
    if as_json:
        print(orjson.dumps(job).decode())
        return
    _print_job(job)
    if job.get("lineage"):
        out.print(
            orjson.dumps(job["lineage"], option=orjson.OPT_INDENT_2).decode(), highlight=False
        )


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[str, typer.Argument(help="The job (shipway jobs list).")],
    manifest: ManifestArg = Path("shipway.yaml"),
) -> None:
    """A job's log, as it wrote it."""
    from shipway.lifecycle import training

    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), READ, "jobs logs", reads_only=True)
        job = training.get_job(parts.store.engine, job_id)
    print(job["log"], end="")


__all__ = ["register"]
