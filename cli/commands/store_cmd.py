"""``gnomon store check [--repair]``: inspect and repair the embedded tracking store."""

from __future__ import annotations

import typer

from ..main import handle_errors
from ..output import console, print_json, table

store_app = typer.Typer(help="Inspect and repair the embedded tracking store (SQLite).", no_args_is_help=True)


@store_app.command("check")
@handle_errors
def check(
    repair: bool = typer.Option(False, "--repair", help="Repair what can be repaired (an interrupted migration, "
                                                        "runs left RUNNING by dead processes), then migrate."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check the store's integrity and schema; find a migration left half-done and runs whose process died."""
    from gnomon.core import embedded_store as store
    from gnomon.core.redact import redact
    from gnomon.core.tracking import default_tracking_uri, setup_tracking

    uri = default_tracking_uri()
    db = store.sqlite_path(uri)
    out = console()
    if db is None:
        out.print(f"tracking store {redact(uri)} is not an SQLite file: nothing to check here")
        return
    done: list[str] = []
    if repair:
        with store.store_lock(db):
            report = store.check(uri)
            done = store.repair(uri, report)
        setup_tracking(uri)  # migrates to the current schema under the lock
    report = store.check(uri)
    info = {"path": report.path, "exists": report.exists, "schema_revision": report.revision,
            "expected_revision": report.head, "integrity": report.integrity, "problems": report.problems,
            "repaired": done}
    if as_json:
        print_json(info)
    else:
        rows = [["path", report.path], ["schema revision", f"{report.revision} (expected {report.head})"],
                ["integrity", report.integrity]]
        rows += [["repaired", line] for line in done]
        rows += [["problem", line] for line in report.problems]
        out.print(table("tracking store", ["check", "result"], rows))
        if report.ok:
            out.print("ok" if report.exists else "ok (no store yet: the first run creates it)")
        else:
            out.print("run 'gnomon store check --repair' to repair it")
    if not report.ok:
        raise typer.Exit(1)


def install(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")
