"""``gnomon plugins ...``: list loaded plugins (other modules add sync, pull, new)."""

from __future__ import annotations

import typer

from .. import state
from ..main import handle_errors
from ..output import console, print_json, table

plugins_app = typer.Typer(help="Inspect, scaffold and distribute plugins.", no_args_is_help=True)


@plugins_app.command("list")
@handle_errors
def list_plugins(
    show_all: bool = typer.Option(False, "--all", help="Also list plugins found but not loaded (disabled or not allowed)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Each plugin: version, where it came from, hooks, what it provides; broken ones with their error."""
    plugins = state.plugins()
    registry = state.engine().registry  # also marks plugins whose registration failed
    entries = []
    for info in plugins.infos.values():
        entry = info.to_dict()
        entry["provides"] = registry.provided_by(info.name) if not info.broken else {}
        entries.append(entry)
    skipped = [{"name": n, "source": s, "reason": r} for n, s, r in plugins.skipped]
    if as_json:
        print_json({"plugins": entries, "skipped": skipped} if show_all else entries)
        return
    rows = []
    for e in entries:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in e["provides"].items())
        status = "[red]broken[/red]" if e["broken"] else "ok"
        rows.append([e["name"], e["version"], e["source"], status, ", ".join(e["hooks"]), provides])
    out = console()
    out.print(table("plugins", ["name", "version", "source", "status", "hooks", "provides"], rows,
                    wrap=["hooks", "provides"]))
    for e in entries:
        if e["broken"]:
            out.print(f"[red]{e['name']}[/red]: {e['error']}" + (f"\n  hint: {e['hint']}" if e["hint"] else ""))
        for w in e["warnings"] if not e["broken"] else []:
            out.print(f"[yellow]warning[/yellow] {e['name']}: {w}")
        if e.get("shadows"):
            out.print(f"[dim]{e['name']} replaces {e['shadows']}[/dim]")
    if show_all and skipped:
        out.print(table("not loaded", ["name", "source", "reason"], [[s["name"], s["source"], s["reason"]] for s in skipped],
                        wrap=["reason"]))


def install(app: typer.Typer) -> None:
    app.add_typer(plugins_app, name="plugins")
