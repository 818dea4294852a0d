"""``gnomon workflow list|show|validate|run`` and ``gnomon report RUN_ID``."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from .. import state
from ..main import handle_errors
from ..output import console, field, print_json, table, tracking_lines

workflow_app = typer.Typer(help="Run declarative workflows of tasks (the backdoor demos) and list them.",
                           no_args_is_help=True)


@workflow_app.command("list")
@handle_errors
def list_workflows(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the registered workflows (run one with 'gnomon workflow run NAME')."""
    from gnomon.core.workflows import registered_workflows

    engine = state.engine()
    items = registered_workflows(engine)
    if as_json:
        print_json([{"name": n, "plugin": p, "steps": None if isinstance(w, Exception) else len(w.steps),
                     "description": str(w) if isinstance(w, Exception) else w.description} for n, p, w in items])
        return
    rows = [[n, p, "broken" if isinstance(w, Exception) else len(w.steps),
             f"error: {w}" if isinstance(w, Exception) else w.description] for n, p, w in items]
    console().print(table(None, ["workflow", "plugin", "steps", "description"], rows, wrap=["description"]))


@workflow_app.command("show")
@handle_errors
def show_workflow(
    name: str = typer.Argument(..., help="Workflow name or TOML file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a workflow's variables and its steps with their tasks and parameters."""
    from gnomon.core.workflows import find_workflow
    from gnomon.core.workflows.refs import step_dependencies

    workflow = find_workflow(state.engine(), name)
    if as_json:
        print_json({"name": workflow.name, "description": workflow.description, "source": workflow.source,
                    "variables": workflow.variables,
                    "steps": [{"name": s.name, "base": s.base, "matrix": s.matrix, "task": s.task, "params": s.params,
                               "report": s.report, "depends_on": step_dependencies(s.params)}
                              for s in workflow.steps]})
        return
    out = console()
    out.print(f"[bold]{workflow.name}[/bold]  [dim]{workflow.source}[/dim]")
    if workflow.description:
        out.print(workflow.description)
    if workflow.variables:
        out.print(table("variables (override with -P name=value)", ["name", "default"],
                        [[k, repr(v)] for k, v in workflow.variables.items()]))
    from rich.markup import escape

    if workflow.sweep:
        axes = {k: v for k, v in workflow.sweep.items() if k != "exclude"}
        out.print("[bold]sweep[/bold] (runs by default; --sweep NAME=... replaces an axis): "
                  + escape("; ".join(f"{k} = {v}" for k, v in axes.items())), soft_wrap=True)
    matrices = sum(1 for d in workflow.declared if d.matrix is not None)
    expanded = f"; {matrices} matrix step(s) expanded" if matrices else ""
    out.print(f"[bold]steps[/bold] ({len(workflow.steps)}, run in this order{expanded}):")
    for s in workflow.steps:
        uses = step_dependencies(s.params)
        line = f"{s.index + 1:>3}. [bold]{escape(s.name)}[/bold]  task [cyan]{escape(s.task)}[/cyan]"
        if uses:
            line += f"  [dim]uses {escape(', '.join(uses))}[/dim]"
        out.print(line, soft_wrap=True)
        for key, value in s.params.items():
            out.print(f"       {escape(key)} = {escape(repr(value))}", soft_wrap=True)


@workflow_app.command("validate")
@handle_errors
def validate_cmd(
    name: str = typer.Argument(..., help="Workflow name or TOML file."),
    param: List[str] | None = typer.Option(None, "-P", "--param", help="Variable override name=value; repeat."),
    sweep: List[str] | None = typer.Option(None, "--sweep", "-S",
                                           help="Sweep a variable: NAME=V1,V2,...; repeat for a cartesian product."),
) -> None:
    """Check every step's parameters and references (every sweep combination) without running anything."""
    from gnomon.core.params import parse_cli_params
    from gnomon.core.workflows import apply_overrides, find_workflow, validate_workflow
    from gnomon.core.workflows.sweep import parse_sweep, plan_sweep

    engine = state.engine()
    workflow = find_workflow(engine, name)
    overrides = parse_cli_params(param or [])
    variables = apply_overrides(workflow, overrides)
    matrix = parse_sweep(workflow, sweep, overrides)
    if matrix is None:
        validate_workflow(engine, workflow, variables)
        console().print(f"workflow '{workflow.name}': {len(workflow.steps)} steps valid")
        return
    plan = plan_sweep(engine, workflow, variables, matrix)
    console().print(f"sweep of workflow '{workflow.name}': {len(plan.combinations)} combinations valid, "
                    f"{plan.total_steps} steps of which {len(plan.unique_steps())} distinct")


@workflow_app.command("run")
@handle_errors
def run_cmd(
    name: str = typer.Argument(..., help="Workflow name (see 'gnomon workflow list') or TOML file."),
    param: List[str] | None = typer.Option(None, "-P", "--param", help="Variable override name=value; repeat."),
    sweep: List[str] | None = typer.Option(None, "--sweep", "-S",
                                           help="Sweep a variable: NAME=V1,V2,...; repeat for a cartesian product "
                                                "(adds to / replaces the file's [sweep] table)."),
    experiment: str | None = typer.Option(None, "--experiment", "-e", envvar="GNOMON_EXPERIMENT",
                                             help="MLflow experiment (default: gnomon)."),
    resume: bool = typer.Option(False, "--resume", help="Skip steps already finished with identical inputs."),
    report_dir: Path | None = typer.Option(None, "--report-dir",
                                              help="Where to write the report (default: $GNOMON_HOME/reports/RUN_ID)."),
    no_report: bool = typer.Option(False, "--no-report", help="Do not build the report."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Do not draw progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    queue: str | None = typer.Option(None, "--queue", "-q",
                                     help="Run each step as its own job on this RQ queue (gnomon worker processes) instead of here."),
    redis: str | None = typer.Option(None, "--redis", help="With --queue: Redis URL (default: GNOMON_REDIS_URL)."),
    plugins: str | None = typer.Option(None, "--plugins", envvar="GNOMON_PLUGINS_URL",
                                       help="With --queue: s3://BUCKET/PREFIX of the synced plugins to pin the job to."),
    endpoint_url: str | None = typer.Option(None, "--endpoint-url", help="With --queue: S3 endpoint URL."),
    wait: bool = typer.Option(False, "--wait", help="With --queue: wait for the workflow to end."),
    retries: int = typer.Option(2, "--retries", min=0, help="With --queue: re-run a step whose worker died this many times."),
) -> None:
    """Run a workflow: all steps in this process, one parent MLflow run with a child run per step.

    With --queue the workflow is validated here and each step is enqueued as its own job, run by
    'gnomon worker' processes as soon as the steps it uses have finished ('gnomon workflow status').
    """
    import os

    if queue:
        if report_dir or no_report:
            from gnomon.core.errors import GnomonError

            raise GnomonError("--report-dir and --no-report apply to local runs; with --queue the last job builds "
                              "the report and logs it on the parent run ('gnomon report RUN_ID' writes it here)")
        from gnomon.core.params import parse_cli_params

        from .remote_cmd import submit_engine, submit_workflow_cmd

        engine, manifest_id = submit_engine(plugins, None, None, endpoint_url, experiment)
        return submit_workflow_cmd(engine, name, parse_cli_params(param or []), queue=queue, redis=redis, sweep=sweep,
                                   manifest_id=manifest_id, plugins=plugins, retries=retries, timeout=None,
                                   wait=wait, wait_timeout=None, as_json=as_json, resume=resume)

    from gnomon.core.quiet import verbose

    if not verbose():
        # TensorFlow's C++ start-up chatter (CUDA probing, graph attribute notes) would bury the
        # step lines; an explicit TF_CPP_MIN_LOG_LEVEL or --debug keeps it.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from gnomon.core.params import parse_cli_params
    from gnomon.core.workflows import apply_overrides, find_workflow, run_workflow

    engine = state.engine(experiment)
    engine.show_progress = not (no_progress or as_json)
    workflow = find_workflow(engine, name)
    overrides = parse_cli_params(param or [])
    variables = apply_overrides(workflow, overrides)
    from gnomon.core.workflows.sweep import parse_sweep

    matrix = parse_sweep(workflow, sweep, overrides)
    if matrix is not None:
        return _run_sweep(engine, workflow, variables, matrix, resume=resume, make_report=not no_report,
                          report_dir=report_dir, as_json=as_json)
    result = run_workflow(engine, workflow, variables, resume=resume, make_report=not no_report,
                          report_dir=report_dir)
    if as_json:
        print_json({"workflow": result.workflow, "run_id": result.run_id, "status": result.status,
                    "duration_s": round(result.duration_s, 3),
                    "report": str(result.report.html_path) if result.report else None,
                    "steps": [s.to_dict() for s in result.steps]})
        return
    out = console()
    ran = sum(s.status == "ran" for s in result.steps)
    out.print(f"workflow [bold]{result.workflow}[/bold] finished in {result.duration_s:.0f} s "
              f"({ran} steps ran, {len(result.steps) - ran} cached); parent run {result.run_id}")
    _print_report(out, result.report)
    tracking_lines(out, engine)


def _run_sweep(engine, workflow, variables, matrix, *, resume, make_report, report_dir, as_json) -> None:
    from gnomon.core.workflows.sweep import plan_sweep, run_sweep

    plan = plan_sweep(engine, workflow, variables, matrix)  # every combination valid before anything runs
    result = run_sweep(engine, plan, resume=resume, make_report=make_report, report_dir=report_dir)
    board = result.leaderboard
    if as_json:
        print_json({"sweep": result.workflow, "run_id": result.run_id, "status": result.status,
                    "duration_s": round(result.duration_s, 3), "combinations": len(result.combinations),
                    "steps_ran": result.steps_ran, "steps_shared": result.steps_shared,
                    "steps_cached": result.steps_cached,
                    "workflow_runs": [{"values": c.values, "run_id": r.run_id} for c, r in result.combinations],
                    "leaderboard": board.to_dict() if board else None})
        return
    out = console()
    out.print(f"sweep [bold]{result.workflow}[/bold] finished in {result.duration_s:.0f} s: "
              f"{len(result.combinations)} combinations, {result.steps_ran} steps ran, {result.steps_shared} shared, "
              f"{result.steps_cached} cached; parent run {result.run_id}")
    _print_leaderboard(out, board)
    out.print(f"[dim]tracking:[/dim] {engine.tracking_uri}  [dim]experiment:[/dim] {engine.experiment}")


def _print_leaderboard(out, board) -> None:
    if board is None:
        return
    from gnomon.core.workflows.leaderboard import leaderboard_table

    out.print(leaderboard_table(board))
    out.print(f"leaderboard: {board.html_path}")
    out.print(f"[dim]tidy results: {board.directory / 'results.csv'}[/dim]")


def _print_report(out, report) -> None:
    if report is None:
        return
    from gnomon.core.workflows.report import results_table

    if report.data.rows:
        out.print(results_table(report.data))
    out.print(f"report: {report.html_path}", soft_wrap=True, markup=False)
    if report.artifact_uri:
        field(out, "logged as", report.artifact_uri)


@handle_errors
def report_cmd(
    run_id: str = typer.Argument(..., help="Parent run id of a workflow (printed by 'gnomon workflow run')."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Folder for the report (default: "
                                                                        "$GNOMON_HOME/reports/RUN_ID)."),
    experiment: str | None = typer.Option(None, "--experiment", "-e", envvar="GNOMON_EXPERIMENT",
                                             help="MLflow experiment (only used to reach the store)."),
    no_log: bool = typer.Option(False, "--no-log", help="Do not log the report on the run again."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    """Rebuild the results report of a finished workflow run (or the leaderboard of a sweep) and print its table."""
    from gnomon.core.workflows.leaderboard import build_leaderboard, is_sweep_run
    from gnomon.core.workflows.report import build_report

    engine = state.engine(experiment)
    if is_sweep_run(engine, run_id):
        board = build_leaderboard(engine, run_id, out_dir=output, log=not no_log)
        if as_json:
            print_json(board.to_dict())
            return
        _print_leaderboard(console(), board)
        return
    report = build_report(engine, run_id, out_dir=output, log=not no_log)
    if as_json:
        from dataclasses import asdict

        print_json({"run_id": run_id, "rows": [asdict(r) for r in report.data.rows],
                    "html": str(report.html_path)})
        return
    _print_report(console(), report)


@workflow_app.command("status")
@handle_errors
def status_cmd(
    run_id: str = typer.Argument(..., help="Parent run id printed by 'gnomon workflow run --queue'."),
    redis: str | None = typer.Option(None, "--redis", help="Redis URL (default: GNOMON_REDIS_URL)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the workflow to end first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Every step of a workflow run on workers: its job state, worker, attempts and MLflow run."""
    from gnomon.core.remote import fanout
    from gnomon.core.remote import jobs as rjobs

    from .remote_cmd import print_workflow_status

    connection = rjobs.connect(redis)
    info = fanout.wait_workflow(connection, run_id) if wait else fanout.workflow_status(connection, run_id)
    print_workflow_status(info, as_json)


@workflow_app.command("cancel")
@handle_errors
def cancel_cmd(
    run_id: str = typer.Argument(..., help="Parent run id printed by 'gnomon workflow run --queue'."),
    redis: str | None = typer.Option(None, "--redis", help="Redis URL (default: GNOMON_REDIS_URL)."),
) -> None:
    """Cancel a workflow run on workers: queued steps are cancelled, running ones stopped (runs KILLED)."""
    from gnomon.core.remote import fanout
    from gnomon.core.remote import jobs as rjobs

    done = fanout.cancel_workflow(rjobs.connect(redis), run_id)
    out = console()
    for step, what in done.items():
        out.print(f"  {step}: {what}")
    out.print(f"workflow run {run_id}: cancelled ({len(done)} steps had not finished); parent run KILLED")


def install(app: typer.Typer) -> None:
    app.add_typer(workflow_app, name="workflow")
    app.command("report")(report_cmd)
