"""``shipway monitor|alerts|feedback``: run the monitor, read its report, see alerts, import
labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from shipway.cli.access import cli_principal
from shipway.cli.lifecycle import ManifestArg, _opened, out, when
from shipway.errors import InputError
from shipway.govern.roles import LABEL, OPERATE
from shipway.settings import Settings

monitor_app = typer.Typer(
    help="Drift, performance and operations over windows of decisions.", no_args_is_help=True
)
alerts_app = typer.Typer(help="Alert firings and resolutions.", no_args_is_help=True)
feedback_app = typer.Typer(help="Ground-truth labels for logged decisions.", no_args_is_help=True)
outbox_app = typer.Typer(
    help="Notifications waiting, sent and failed (webhooks).", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(monitor_app, name="monitor")
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(feedback_app, name="feedback")
    app.add_typer(outbox_app, name="outbox")


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def print_report(r: dict[str, Any]) -> None:
    out.print(
        f"[bold]{r['service']}[/] model v{r.get('model_version')}: window "
        f"{when(r.get('window_start'), '')} .. {when(r.get('window_end'))}, "
        f"{r['n']} decisions"
    )
    ops = r.get("operations") or {}
    out.print(
        "operations: "
        + ", ".join(
            f"{k} {_f(ops.get(k))}"
            for k in ("error_rate", "p50_ms", "p95_ms", "p99_ms", "fallback_share", "cost")
        )
    )
    if ops.get("rejected"):
        worst = sorted((ops.get("contract_violations") or {}).items(), key=lambda kv: -kv[1])
        out.print(
            f"refused: {ops['rejected']} rows in {ops.get('rejected_requests')} requests "
            f"(share {_f(ops.get('rejected_share'))}); by field:rule "
            + ", ".join(f"{k} {v}" for k, v in worst[:5]),
            highlight=False,
        )
    drift = r.get("drift")
    if drift:
        t = Table(
            title=f"input drift: {len(drift['drifted'])} of {len(drift['features'])} "
            f"features drifted (share {drift['drift_share']:.2f})"
        )
        for col in ("feature", "test", "p (BH)", "effect", "floor", "PSI", "verdict"):
            t.add_column(col)
        for name, f in drift["features"].items():
            numeric = f["kind"] == "numeric"
            test = f"KS {_f(f.get('ks'))}" if numeric else f"chi2 {_f(f.get('chi2'), 2)}"
            verdict = (
                "[red]DRIFT[/]"
                if f["drifted"]
                else ("significant, small" if f["significant"] else "ok")
            )
            t.add_row(
                name,
                test,
                _f(f.get("p_adjusted")),
                _f(f.get("effect")),
                _f(f["floor"], 2),
                _f(f.get("psi")),
                verdict,
            )
        out.print(t)
        od = r.get("output_drift") or {}
        for name, f in (od.get("features") or {}).items():
            verdict = "DRIFT" if f["drifted"] else "ok"
            out.print(
                f"{name} drift: effect {_f(f.get('effect'))}, "
                f"p (BH) {_f(f.get('p_adjusted'))}: {verdict}"
            )
    else:
        out.print(f"drift: {r.get('drift_skipped', 'not computed')}")
    perf = r.get("performance") or {}
    if perf.get("labeled"):
        figures = ", ".join(
            f"{k} {_f(perf[k])}"
            for k in ("accuracy", "f1_macro", "roc_auc", "mae", "rmse")
            if k in perf
        )
        out.print(
            f"performance on {perf['labeled']} labeled decisions: {figures}"
            + (" (a small sample: read with care)" if perf["labeled"] < 100 else "")
        )
    else:
        out.print("performance: no feedback labels in this window")
    for a in r.get("alerts") or []:
        out.print(f"alert [bold]{a['rule']}[/]: {a['status']}")
    for p in r.get("alerts_pending") or []:
        note = "" if p["counted"] else " (this window overlaps the last one counted)"
        out.print(
            f"alert [bold]{p['rule']}[/]: pending, {p['windows']} of {p['for']} windows{note}"
        )


@monitor_app.command("run")
def monitor_run(
    manifest: ManifestArg = Path("shipway.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compute one window now, store it, evaluate alert rules and act on them.

    Notifications are queued in the outbox; a running server delivers them (or run
    'shipway outbox deliver')."""
    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), OPERATE, "monitor run")
        result = parts.monitor.run()
    if as_json:
        print(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS).decode())
    else:
        print_report(result)


@monitor_app.command("report")
def monitor_report(
    manifest: ManifestArg = Path("shipway.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The latest stored window, readable (or --json)."""
    with _opened(manifest) as parts:
        rows = parts.monitor.latest(1)
    if not rows:
        out.print("The monitor has not run yet: shipway monitor run")
        raise typer.Exit(1)
    if as_json:
        print(orjson.dumps(rows[0], option=orjson.OPT_NON_STR_KEYS).decode())
    else:
        print_report(rows[0])


@alerts_app.command("list")
def alerts_list(
    manifest: ManifestArg = Path("shipway.yaml"),
    limit: Annotated[int, typer.Option(help="Newest events to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Every firing and resolution, with what each action did."""
    with _opened(manifest) as parts:
        events = parts.monitor.alerts.events(limit)
    if as_json:
        for e in reversed(events):
            print(orjson.dumps(e, option=orjson.OPT_NON_STR_KEYS).decode())
        return
    t = Table(title=f"alerts of {parts.name}")
    for col in ("time (UTC)", "rule", "status", "actions"):
        t.add_column(col)
    for e in reversed(events):
        acts = "; ".join(
            a["action"]
            + (
                ": " + str(a["result"])
                if "result" in a
                else ": " + ", ".join(f"{d['to']} {d['status']}" for d in a.get("deliveries", []))
            )
            for a in e["detail"].get("actions", [])
        )
        t.add_row(when(e["ts"], ""), e["rule"], e["status"], acts)
    out.print(t)


@feedback_app.command("import")
def feedback_import(
    file: Annotated[
        Path, typer.Argument(help="CSV or Parquet with columns id (or the --key column) and label.")
    ],
    manifest: ManifestArg = Path("shipway.yaml"),
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help=(
                "Join on this column instead of decision ids: the contract's first role: id "
                "field (for example customer_id). Each key labels the newest decision carrying "
                "it logged within --within."
            ),
        ),
    ] = None,
    within: Annotated[
        str, typer.Option(help="With --key: how far back a decision may be, e.g. 30d or 12h.")
    ] = "30d",
    skip_unmatched: Annotated[
        bool,
        typer.Option(
            "--skip-unmatched",
            help="With --key: store the labels whose key names a decision and count the rest "
            "(by default one unmatched key refuses the whole file).",
        ),
    ] = False,
) -> None:
    """Attach delayed ground truth to logged decisions, joined on the decision id or, with
    --key, on a business id."""
    from shipway.decisions.labels import read_file
    from shipway.manifest import Duration

    with _opened(manifest) as parts:
        within_s = Duration(within).seconds  # a bad duration exits 1 naming the problem
        if key is not None and key != parts.manifest.contract.key_field:
            field = parts.manifest.contract.key_field
            raise InputError(
                f"--key {key}: labels join on the contract's first role: id field, "
                + (f"which is {field}" if field else "and the contract has none")
            )
        who = cli_principal(parts.store, Settings(), LABEL, "feedback import")
        items = read_file(file, key)
        stored = parts.record_feedback(
            items, who, source="file", within_s=within_s, skip_unmatched=skip_unmatched
        )
    revised = sum(1 for s in stored if s["revision"] > 1)
    skipped = len(items) - len(stored)
    out.print(
        f"stored {len(stored)} labels ({revised} revisions of earlier labels)"
        + (
            f"; {skipped} keys named no decision within {within} and were skipped"
            if skipped
            else ""
        )
    )


@outbox_app.command("list")
def outbox_list(
    manifest: ManifestArg = Path("shipway.yaml"),
    status: Annotated[
        str | None, typer.Option(help="Only pending, delivered or failed messages.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Newest messages to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Notifications with their delivery: attempts, outcome, last error."""
    with _opened(manifest) as parts:
        msgs = parts.outbox.messages(limit=limit, status=status)
    if as_json:
        for msg in reversed(msgs):
            print(orjson.dumps(msg, option=orjson.OPT_NON_STR_KEYS).decode())
        return
    t = Table(title=f"notifications of {parts.name}")
    for col in ("id", "queued (UTC)", "topic", "to", "status", "attempts", "last error"):
        t.add_column(col)
    for msg in reversed(msgs):
        t.add_row(
            str(msg["id"]),
            when(msg["created_at"], ""),
            msg["topic"],
            msg["url"],
            msg["status"],
            str(msg["attempts"]),
            msg["last_error"] or "",
        )
    out.print(t)


@outbox_app.command("deliver")
def outbox_deliver(manifest: ManifestArg = Path("shipway.yaml")) -> None:
    """Deliver the notifications that are due now (a running server does this by itself)."""
    with _opened(manifest) as parts:
        cli_principal(parts.store, Settings(), OPERATE, "outbox deliver")
        n = parts.outbox.deliver_due()
        pending, _oldest = parts.outbox.backlog()
    out.print(f"{n} delivery attempts made; {pending} notifications still pending")
