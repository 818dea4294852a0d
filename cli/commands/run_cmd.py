"""``gnomon run TASK -P name=value ...``: run one task as an MLflow run."""

from __future__ import annotations

from typing import List

import typer

from .. import state
from ..main import handle_errors
from ..output import console, field, print_json, table, tracking_lines


@handle_errors
def run(
    task: str = typer.Argument(..., help="Task name (see 'gnomon tasks list')."),
    param: List[str] | None = typer.Option(None, "-P", "--param", help="Parameter as name=value; repeat."),
    experiment: str | None = typer.Option(None, "--experiment", "-e", envvar="GNOMON_EXPERIMENT",
                                             help="MLflow experiment (default: gnomon)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not draw progress bars."),
) -> None:
    """Run TASK with parameters given as -P name=value (validated before anything starts)."""
    from gnomon.core.params import parse_cli_params

    params = parse_cli_params(param or [])  # a malformed -P fails before anything is opened
    engine = state.engine(experiment)
    engine.show_progress = not (no_progress or as_json)
    result = engine.run(task, params)
    if as_json:
        print_json(result.to_dict())
        return
    out = console()
    rows = [[k, f"{v:.6g}"] for k, v in sorted(result.metrics.items())]
    out.print(table(f"{result.task}: run {result.run_id} {result.status}", ["metric", "value"], rows))
    for key, value in result.outputs.items():
        field(out, key, value)
    tracking_lines(out, engine)


def install(app: typer.Typer) -> None:
    app.command("run")(run)
