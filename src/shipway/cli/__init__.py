"""The command line: ``shipway init | serve | decisions export | demo``."""

from __future__ import annotations

import csv
import getpass
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from shipway import __version__
from shipway.cli.access import cli_principal
from shipway.cli.lifecycle import console as cli_console
from shipway.errors import ShipwayError
from shipway.govern.roles import ADMIN, READ_INPUTS
from shipway.settings import Settings

app = typer.Typer(
    name="shipway",
    help="Take an AI pilot to production: a validated, logged, monitored service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
decisions_app = typer.Typer(help="Read the decision log.", no_args_is_help=True)
app.add_typer(decisions_app, name="decisions")
models_app = typer.Typer(help="Register and list model versions.", no_args_is_help=True)
app.add_typer(models_app, name="models")
rollout_app = typer.Typer(
    help="Move traffic between versions: shadow, canary, step, promote, rollback.",
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")

console = cli_console(stderr=True)
out = cli_console()


def _actor(settings: Settings) -> str:
    if settings.actor:
        return settings.actor
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        out.print(f"shipway {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Shipway: every request becomes a logged, validated Decision."""


@app.command()
def init(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help=(
                "Pilot model: a joblib file (scikit-learn), an .onnx file, an MLflow model "
                "folder or models:/ URI, python:module:function, or the http(s):// URL of a "
                "model endpoint (see --endpoint)."
            ),
        ),
    ],
    data: Annotated[Path, typer.Option("--data", help="The pilot's data (CSV or Parquet).")],
    target: Annotated[str, typer.Option("--target", help="Name of the label column in DATA.")],
    name: Annotated[
        str | None, typer.Option(help="Service name (default: from DATA's name).")
    ] = None,
    directory: Annotated[Path, typer.Option("--dir", help="Where to write shipway.yaml.")] = Path(
        "."
    ),
    holdout: Annotated[float, typer.Option(help="Share of DATA held out for scoring.")] = 0.2,
    range_margin: Annotated[
        float, typer.Option(help="Widen observed numeric ranges by this share of their span.")
    ] = 0.1,
    force: Annotated[bool, typer.Option(help="Overwrite an existing manifest.")] = False,
    endpoint: Annotated[
        Path | None,
        typer.Option(
            "--endpoint",
            help=(
                "A YAML file with the manifest's endpoint section (how to call an HTTP model: "
                "json or chat, mappings, prompt, prices); copied into shipway.yaml."
            ),
        ),
    ] = None,
    ids: Annotated[
        list[str] | None,
        typer.Option(
            "--id",
            help=(
                "A column that identifies rows (repeatable): logged, a canary and label-join "
                "key, never drift-tested, given to the model only if it names it. Columns "
                "unique per row and named like customer_id, customerId or order_no (or holding "
                "UUIDs) are made ids without it."
            ),
        ),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--meta",
            help=(
                "A column to log but not drift-test (repeatable), given to the model only if it "
                "names it. ISO 8601 date columns are made metadata without it."
            ),
        ),
    ] = None,
    features: Annotated[
        list[str] | None,
        typer.Option(
            "--feature",
            help="A column the model reads, whatever it looks like (repeatable).",
        ),
    ] = None,
    max_score_rows: Annotated[
        int,
        typer.Option(
            "--max-score-rows",
            min=1,
            help="HTTP models: score at most this many holdout rows (each is a billed call).",
        ),
    ] = 200,
    concurrency: Annotated[
        int,
        typer.Option(min=1, help="HTTP models: calls in flight while scoring the holdout."),
    ] = 8,
) -> None:
    """Write shipway.yaml from a pilot and register it as model version 1.

    Model files are Python pickles: loading one runs code. Only use files from sources you trust.
    """
    from shipway.lifecycle.onboard import init_service

    settings = Settings()
    if not 0 < holdout < 1:
        raise fail(f"--holdout must be between 0 and 1, not {holdout}")
    endpoint_spec = None
    if endpoint is not None:
        endpoint_spec = _read_endpoint(endpoint)
    try:
        with console.status(
            "Inferring the contract and scoring the pilot on a holdout..."
        ) as status:

            def progress(done: int, total: int, cost: float) -> None:
                status.update(
                    f"Scoring the endpoint on the holdout: {done} of {total} rows, "
                    f"{cost:.4f} spent in token prices"
                )

            res = init_service(
                max_score_rows=max_score_rows,
                concurrency=concurrency,
                progress=progress,
                endpoint=endpoint_spec,
                authorize=lambda store: cli_principal(store, settings, ADMIN, "init").actor,
                model=model,
                data=data,
                target=target,
                name=name,
                directory=directory,
                settings=settings,
                holdout_fraction=holdout,
                range_margin=range_margin,
                actor="cli:" + _actor(settings),
                force=force,
                ids=ids or (),
                metadata=metadata or (),
                features=features or (),
            )
    except ShipwayError as exc:
        raise fail(exc.message) from None
    m = res.manifest
    out.print(f"[green]Wrote[/] {res.manifest_path}")
    for role in ("id", "metadata"):
        chosen = [n for n, r in res.roles.items() if r == role]
        if chosen:
            out.print(
                f"  {role} fields (logged, never drift-tested, given to the model only if it "
                f"names them): {', '.join(chosen)}; to decide otherwise pass --feature, --id or "
                "--meta NAME",
                highlight=False,
            )
    out.print(
        f"  service [bold]{m.service.name}[/]: {len(m.contract.inputs)} inputs, "
        f"{m.output.kind}" + (f" with labels {m.output.labels}" if m.output.labels else "")
    )
    out.print(f"  model version {res.version} registered ({m.model.uri})")
    for note in res.notes:
        out.print(f"  {note}", highlight=False)
    scores = ", ".join(f"{k}={v:.4f}" for k, v in res.metrics.items())
    out.print(f"  holdout ({res.holdout_rows} of {res.rows} rows): {scores}")
    rules = ", ".join(f"{r.name} ({r.when})" for r in m.monitor.alerts)
    out.print(
        f"  monitoring: alert rules {rules}; add monitor.webhooks to be told", highlight=False
    )
    out.print(next_steps(res.manifest_path, res.example), highlight=False, markup=False)


def next_steps(manifest: Path, example: dict[str, Any]) -> str:
    """The commands from a fresh init to an authenticated, monitored service, ready to paste."""
    m = str(manifest)
    body = orjson.dumps({"inputs": example}).decode().replace("'", "'\\''")
    create = f"shipway keys create -m {m} --name"
    return "\n".join(
        [
            "Next, to serve it with authentication on (copy and paste):",
            '  export SHIPWAY_SECRET_KEY=$(python -c "import secrets; '
            'print(secrets.token_hex(32))")',
            f"  export SHIPWAY_API_KEY=$({create} admin --role admin | tail -1)",
            f"  PREDICT_KEY=$({create} app --role predictor | tail -1)",
            f"  shipway serve -m {m} --port 8000 &",
            "  until curl -sf localhost:8000/readyz >/dev/null; do sleep 0.5; done",
            '  curl -s localhost:8000/v1/predict -H "Authorization: Bearer $PREDICT_KEY" '
            f"-d '{body}'",
        ]
    )


def _read_endpoint(path: Path) -> Any:
    from shipway.models.endpoints import read_endpoint_file

    try:
        return read_endpoint_file(path)
    except ShipwayError as exc:
        raise fail(exc.message) from None


#: The manifest as a positional argument, kept for compatibility beside -m/--manifest.
ManifestPositional = Annotated[
    Path | None,
    typer.Argument(help="The manifest (or its folder); same as -m.", show_default=False),
]
ManifestOption = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        "-m",
        help="The service's manifest (or its folder).",
        show_default="shipway.yaml",
    ),
]


def _manifest_path(positional: Path | None, option: Path | None) -> Path:
    if positional is not None and option is not None and positional != option:
        raise fail(f"two manifests given ({positional} and -m {option}); give one")
    return option or positional or Path("shipway.yaml")


@app.command()
def serve(
    manifest_arg: ManifestPositional = None,
    manifest: ManifestOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request line.")] = False,
    dev: Annotated[
        bool,
        typer.Option(
            "--dev",
            help="Development mode: authentication OFF (every caller is an admin). "
            "Same as SHIPWAY_DEV_MODE=1. Never in production.",
        ),
    ] = False,
) -> None:
    """Serve the manifest's model over HTTP (own JSON API and V2) until stopped.

    Outside development mode every route but /healthz, /readyz and /metrics needs an API key
    or an OIDC token, and SHIPWAY_SECRET_KEY (or SHIPWAY_SECRET_KEY_FILE) must be set.
    """
    import uvicorn

    from shipway.api import create_app
    from shipway.service import Service

    path = _manifest_path(manifest_arg, manifest)
    settings = Settings(dev_mode=True) if dev else Settings()
    try:
        service = Service.open(path, settings)
    except ShipwayError as exc:
        raise fail(exc.message) from None
    if settings.dev_mode:
        console.print(
            "[bold red]DEVELOPMENT MODE: authentication is OFF and every caller is an admin. "
            "Do not expose this server.[/]"
        )
    console.print(
        f"Serving [bold]{service.name}[/] model v{service.router.champion.version} on "
        f"http://{host}:{port}  (docs: /docs, metrics: /metrics)",
        highlight=False,
    )
    for level, line in service.startup_notes():
        style = "[yellow]warning:[/] " if level == "warn" else "  "
        console.print(style + line, highlight=False)
    config = uvicorn.Config(
        create_app(service),
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        loop="auto",
        http="auto",
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise typer.Exit(1)


@app.command()
def validate(
    manifest_arg: ManifestPositional = None,
    manifest: ManifestOption = None,
    dev: Annotated[
        bool, typer.Option("--dev", help="Check as development mode (no secret needed).")
    ] = False,
) -> None:
    """Check a manifest the way serve does, without serving: the file (every problem with its
    line), the store, the secret, and every model it names loads. Exit 1 on any problem, for CI.

    Loading a model runs its code: validate only manifests whose models you trust.
    """
    from shipway.errors import ManifestError
    from shipway.service import Service

    path = _manifest_path(manifest_arg, manifest)
    settings = Settings(dev_mode=True) if dev else Settings()
    try:
        service = Service.open(path, settings)
    except ManifestError as exc:
        for problem in exc.problems or [exc.message]:
            console.print(f"[bold red]error:[/] {problem}", highlight=False)
        raise typer.Exit(1) from None
    except ShipwayError as exc:
        raise fail(exc.message) from None
    try:
        out.print(
            f"[green]valid[/]: {path} serves [bold]{service.name}[/] with model "
            f"v{service.router.champion.version}",
            highlight=False,
        )
        for level, line in service.startup_notes():
            out.print(("[yellow]warning:[/] " if level == "warn" else "  ") + line, highlight=False)
    finally:
        service.close()


def _parse_since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--since {text!r} is neither an ISO date/time nor a Unix timestamp") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@decisions_app.command("export")
def decisions_export(
    manifest_arg: ManifestPositional = None,
    manifest: ManifestOption = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    since: Annotated[
        str | None,
        typer.Option(help="Only decisions at or after this time (ISO 8601 or Unix seconds)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of standard output.")
    ] = None,
) -> None:
    """Write every logged decision of the service, oldest first."""
    from shipway.decisions import iter_decisions
    from shipway.parts import ServiceParts

    if fmt not in ("jsonl", "csv"):
        raise fail(f"--format must be jsonl or csv, not {fmt!r}")
    ts_since = _parse_since(since)
    try:
        parts = ServiceParts.open(_manifest_path(manifest_arg, manifest), Settings())
    except ShipwayError as exc:
        raise fail(exc.message) from None
    m, store = parts.manifest, parts.store
    try:  # with a key set, the key must be allowed to read decisions with their inputs
        cli_principal(store, Settings(), READ_INPUTS, "decisions export", reads_only=True)
    except ShipwayError as exc:
        parts.close()
        raise fail(exc.message) from None
    stream = open(output, "w", newline="", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    count = 0
    try:
        rows = iter_decisions(store.engine, service=m.service.name, since=ts_since)
        if fmt == "jsonl":
            for d in rows:
                d["time"] = datetime.fromtimestamp(d["ts"], UTC).isoformat()
                stream.write(orjson.dumps(d).decode() + "\n")
                count += 1
        else:
            fields = [
                "id",
                "time",
                "ts",
                "service",
                "model_version",
                "route",
                "output",
                "confidence",
                "latency_ms",
                "caller",
                "error",
                "reason",
                "cost",
                "prompt_tokens",
                "completion_tokens",
            ]
            input_names = [f.name for f in m.contract.inputs]
            writer = csv.writer(stream)
            writer.writerow(fields + [f"input.{n}" for n in input_names])
            for d in rows:
                d["time"] = datetime.fromtimestamp(d["ts"], UTC).isoformat()
                writer.writerow(
                    [_cell(d.get(f)) for f in fields]
                    + [_cell(d["inputs"].get(n)) for n in input_names]
                )
                count += 1
        stream.flush()
    finally:
        if output:
            stream.close()
        parts.close()
    console.print(f"exported {count} decisions", style="dim")


def _cell(v: Any) -> Any:
    if isinstance(v, dict | list):
        return orjson.dumps(v).decode()
    return "" if v is None else v


@app.command()
def demo(
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds (default: serve until Ctrl-C)."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port for the demo service.")] = 8000,
    workdir: Annotated[
        Path | None, typer.Option(help="Workspace to use (default: a new temporary folder).")
    ] = None,
) -> None:
    """Train a pilot on a bundled data set, init, serve, replay traffic and report."""
    from shipway.cli.demo import run_demo

    try:
        code = run_demo(duration=duration, port=port, workdir=workdir, console=out)
    except ShipwayError as exc:
        raise fail(exc.message) from None
    raise typer.Exit(code)


from shipway.cli.lifecycle import register as _register_lifecycle  # noqa: E402

_register_lifecycle(models_app, rollout_app)

from shipway.cli.govern import register as _register_govern  # noqa: E402

_register_govern(app)

from shipway.cli.monitor import register as _register_monitor  # noqa: E402

_register_monitor(app)

from shipway.cli.review import register as _register_review  # noqa: E402

_register_review(app)

from shipway.cli.data import register as _register_data  # noqa: E402

_register_data(app)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


__all__ = ["app", "main"]

from shipway.cli.data_report import register as _register_data_report  # noqa: E402

_register_data_report(app)

from shipway.cli.training import register as _register_training  # noqa: E402

_register_training(app)
