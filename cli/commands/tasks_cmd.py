"""``gnomon tasks list`` and ``gnomon tasks show``."""

from __future__ import annotations

import typer

from .. import state
from ..main import handle_errors
from ..output import console, print_json, table

tasks_app = typer.Typer(help="List tasks and show their parameters.", no_args_is_help=True)


@tasks_app.command("list")
@handle_errors
def list_tasks(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every registered task with its plugin and summary."""
    engine = state.engine()
    tasks = engine.tasks()
    if as_json:
        print_json([{"name": t.name, "summary": t.summary, "category": t.category, "plugin": t.plugin} for t in tasks])
        return
    rows = [[t.name, t.category, t.plugin, t.summary] for t in sorted(tasks, key=lambda t: (t.category, t.name))]
    console().print(table(None, ["task", "category", "plugin", "summary"], rows, wrap=["summary"]))


@tasks_app.command("show")
@handle_errors
def show_task(
    name: str = typer.Argument(..., help="Task name."),
    as_json: bool = typer.Option(False, "--json", help="Print the parameters as JSON Schema."),
) -> None:
    """Show a task's parameters: type, default, range or choices, and help."""
    from gnomon.core.params import json_schema

    engine = state.engine()
    task = engine.task(name)
    schema = json_schema(task, engine.registry)
    if as_json:
        schema["x-plugin"] = task.plugin
        print_json(schema)
        return
    out = console()
    out.print(f"[bold]{task.name}[/bold] ({task.category}, plugin [cyan]{task.plugin}[/cyan])")
    out.print(task.summary)
    if task.description:
        out.print(task.description)
    rows = []
    for pname, prop in schema["properties"].items():
        kind = prop.get("type")
        kind = "|".join(kind) if isinstance(kind, list) else kind
        constraint = []
        if "enum" in prop:
            constraint.append("one of: " + ", ".join(map(str, prop["enum"])))
        lo = prop.get("minimum", prop.get("exclusiveMinimum"))
        hi = prop.get("maximum", prop.get("exclusiveMaximum"))
        if lo is not None or hi is not None:
            left = "[" if "minimum" in prop else "("
            right = "]" if "maximum" in prop else ")"
            constraint.append(f"{left}{'' if lo is None else lo}, {'' if hi is None else hi}{right}")
        default = "(required)" if pname in schema.get("required", []) else repr(prop.get("default"))
        rows.append([pname, kind, default, "; ".join(constraint), prop.get("description", "")])
    out.print(table(None, ["parameter", "type", "default", "range / choices", "help"], rows,
                    wrap=["range / choices", "help"]))


def install(app: typer.Typer) -> None:
    app.add_typer(tasks_app, name="tasks")
