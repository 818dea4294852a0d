"""Remote execution commands: ``plugins sync|pull``, ``worker``, ``submit`` and ``jobs list|show|cancel``.

Only typer is imported here; boto3, rq, redis and mlflow are imported inside the commands.
"""

from __future__ import annotations

import os
from typing import List

import typer

from .. import state
from ..main import handle_errors
from ..output import console, print_json, table
from .plugins_cmd import plugins_app

jobs_app = typer.Typer(help="List, inspect and cancel jobs on a Redis queue.", no_args_is_help=True)

ENDPOINT_HELP = "S3 endpoint URL (default: AWS_ENDPOINT_URL, else AWS)."
REDIS_HELP = "Redis URL (default: GNOMON_REDIS_URL, else redis://127.0.0.1:6379/0)."
QUEUE_HELP = "RQ queue name."


def _bundle_progress(total: int, description: str, quiet: bool):
    """A rich progress bar over ``total`` bundles on stderr; returns ``(context, callback)``."""
    import contextlib
    import sys

    if quiet or total == 0 or not sys.stderr.isatty():  # nothing to draw for pipes and logs
        return contextlib.nullcontext(), None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[last]}"), console=console(stderr=True), transient=True)
    tid = bar.add_task(description, total=total, last="")

    def advance(name: str, outcome: str, size: int) -> None:
        bar.update(tid, advance=1, last=f"{name} {outcome}")

    return bar, advance


@plugins_app.command("sync")
@handle_errors
def sync(
    url: str = typer.Argument(..., help="Destination, s3://BUCKET/PREFIX."),
    endpoint_url: str | None = typer.Option(None, "--endpoint-url", help=ENDPOINT_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be uploaded or deleted; write nothing."),
    delete: bool = typer.Option(False, "--delete", help="Delete bundles no current (or recent) manifest references."),
    keep_for: float = typer.Option(3600.0, "--keep-for", help="With --delete: keep what manifests younger than this many seconds reference."),
    jobs: int = typer.Option(8, "--jobs", "-j", min=1, max=64, help="Parallel uploads."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Upload every loaded plugin as a content-addressed bundle, then the manifest (written last)."""
    from gnomon.core.remote.sync import sync_plugins

    plugins = state.plugins()
    state.warn_broken()
    bar, advance = _bundle_progress(len(plugins.loaded), "sync", as_json)
    with bar:
        report = sync_plugins(plugins, url, endpoint=endpoint_url, dry_run=dry_run, delete=delete,
                              keep_for=keep_for, workers=jobs, on_bundle=advance)
    if as_json:
        print_json(report.to_dict())
        return
    # plain lines (no rich): sync is often scripted, and this keeps its start-up lean
    verb = "would upload" if dry_run else "uploaded"
    rows = sorted([(n, verb, f"{s:,} bytes") for n, s in report.uploaded] + [(n, "unchanged", "") for n in report.skipped])
    width = max([len(n) for n, _, _ in rows] + [6])
    typer.echo(f"sync to {report.location}")
    for name, action, size in rows:
        typer.echo(f"  {name:<{width}}  {action:<12} {size}".rstrip())
    for name, reason in report.not_synced:
        typer.echo(f"  not synced {name}: {reason}")
    for key in report.deleted:
        typer.echo(f"  {'would delete' if dry_run else 'deleted'} {key}")
    state_text = ("written" if report.manifest_written else
                  "unchanged" if not dry_run or not report.uploaded else "not written (dry run)")
    typer.echo(f"{verb} {len(report.uploaded)}, skipped {len(report.skipped)}, {report.bytes_uploaded:,} bytes; "
               f"manifest {report.manifest_id} {state_text} ({report.seconds:.2f} s)")


@plugins_app.command("pull")
@handle_errors
def pull_cmd(
    url: str = typer.Argument(..., help="Source, s3://BUCKET/PREFIX."),
    cache: str | None = typer.Option(None, "--cache", help="Plugin cache folder (default: $GNOMON_HOME/plugin-cache)."),
    version: str | None = typer.Option(None, "--version", help="Manifest version to pull (default: the latest sync)."),
    endpoint_url: str | None = typer.Option(None, "--endpoint-url", help=ENDPOINT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Fetch changed bundles, verify their sha256, extract them safely and switch the cache's active set."""
    from gnomon.core.remote.pull import active_dir, default_cache, pull

    cache_dir = cache or str(default_cache())
    report = pull(url, cache_dir, version=version, endpoint=endpoint_url)
    if as_json:
        print_json(report.to_dict())
        return
    typer.echo(f"manifest {report.manifest_id}: fetched {len(report.fetched)} ({report.bytes_fetched:,} bytes), "
               f"cached {len(report.reused)}; active set {'switched' if report.changed else 'unchanged'} "
               f"({report.seconds:.2f} s)")
    typer.echo(f"use it with: export GNOMON_PLUGIN_PATH={active_dir(cache_dir)}")


@handle_errors
def worker(
    redis: str | None = typer.Option(None, "--redis", help=REDIS_HELP),
    queue: List[str] = typer.Option(["gnomon"], "--queue", "-q", help=QUEUE_HELP + " Repeat for several."),
    plugins: str | None = typer.Option(None, "--plugins", envvar="GNOMON_PLUGINS_URL",
                                          help="s3://BUCKET/PREFIX the plugins were synced to; jobs run exactly those."),
    cache: str | None = typer.Option(None, "--cache", help="This worker's plugin cache (default: $GNOMON_HOME/plugin-cache)."),
    endpoint_url: str | None = typer.Option(None, "--endpoint-url", help=ENDPOINT_HELP),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                               help="Shared MLflow tracking server, e.g. http://mlflow:5000."),
    burst: bool = typer.Option(False, "--burst", help="Exit when the queues are empty."),
    name: str | None = typer.Option(None, "--name", help="Worker name (default: RQ's)."),
    heartbeat: int = typer.Option(10, "--heartbeat", min=1, help="Seconds between heartbeats while a job runs."),
    abandoned_after: int = typer.Option(60, "--abandoned-after", min=1,
                                        help="A job whose worker missed heartbeats this long is abandoned (retried or failed)."),
    maintenance_interval: int = typer.Option(60, "--maintenance-interval", min=1,
                                             help="Seconds between cleanups of abandoned jobs."),
) -> None:
    """Run an RQ worker: pull the synced plugins, then run jobs from the queues, logging to the tracking server."""
    from gnomon.core.remote.worker import start_worker

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    start_worker(redis, list(queue), plugins, cache=cache, endpoint=endpoint_url, burst=burst, name=name,
                 heartbeat=heartbeat, abandoned_after=abandoned_after, maintenance_interval=maintenance_interval,
                 echo=lambda m: console(stderr=True).print(m, markup=False))


@handle_errors
def submit(
    task: str = typer.Argument(..., help="Task name (with --workflow: a registered workflow name)."),
    param: List[str] | None = typer.Option(None, "-P", "--param", help="Parameter (workflow: variable) as name=value; repeat."),
    workflow: bool = typer.Option(False, "--workflow", help="TASK is a registered workflow, run like 'gnomon workflow run'."),
    queue: str = typer.Option("gnomon", "--queue", "-q", help=QUEUE_HELP),
    redis: str | None = typer.Option(None, "--redis", help=REDIS_HELP),
    plugins: str | None = typer.Option(None, "--plugins", envvar="GNOMON_PLUGINS_URL",
                                          help="s3://BUCKET/PREFIX: validate against (and pin the job to) the synced plugins."),
    plugins_version: str | None = typer.Option(None, "--plugins-version", help="Manifest version (default: latest)."),
    cache: str | None = typer.Option(None, "--cache", help="Plugin cache used for validation."),
    endpoint_url: str | None = typer.Option(None, "--endpoint-url", help=ENDPOINT_HELP),
    experiment: str | None = typer.Option(None, "--experiment", "-e", envvar="GNOMON_EXPERIMENT",
                                             help="MLflow experiment (default: gnomon)."),
    retries: int | None = typer.Option(None, "--retries", min=0,
                                       help="Task: re-run the job this many times if it fails or its worker dies "
                                            "(default 0). Workflow: re-run a step whose worker died (default 2)."),
    timeout: int | None = typer.Option(None, "--timeout", min=1, help="Kill the job after this many seconds."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the job to end and print its result."),
    wait_timeout: float | None = typer.Option(None, "--wait-timeout", help="With --wait: give up after this many seconds."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Validate TASK's parameters, then enqueue it for a worker (pinned to the synced manifest version)."""
    from gnomon.core.params import parse_cli_params
    from gnomon.core.remote import RemoteError
    from gnomon.core.remote import jobs as rjobs

    params = parse_cli_params(param or [])
    engine, manifest_id = submit_engine(plugins, plugins_version, cache, endpoint_url, experiment)
    # bad params never reach the queue; checks needing the tracking store run only against a shared server
    preflight = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    if workflow:
        return submit_workflow_cmd(engine, task, params, queue=queue, redis=redis, manifest_id=manifest_id,
                                   plugins=plugins, retries=retries, timeout=timeout, wait=wait,
                                   wait_timeout=wait_timeout, as_json=as_json, preflight=preflight)
    engine.validate(task, params, preflight=preflight)
    connection = rjobs.connect(redis)
    job = rjobs.submit(connection, task, params, queue_name=queue, manifest_id=manifest_id, plugins_url=plugins,
                       experiment=engine.experiment, retries=retries or 0, timeout=timeout)
    if not wait:
        if as_json:
            print_json({"id": job.id, "queue": queue, "task": task, "manifest": manifest_id, "status": "queued"})
        else:
            console().print(f"submitted job {job.id} ({task}) to queue '{queue}'"
                            + (f", plugins manifest {manifest_id}" if manifest_id else ""))
        return
    info = rjobs.wait(connection, job.id, timeout=wait_timeout)
    _print_job(info, as_json)
    if info["status"] != "finished":
        raise RemoteError(f"job {job.id} {info['status']}: {info.get('error') or 'no error recorded'}")


def submit_engine(plugins: str | None, plugins_version: str | None, cache: str | None, endpoint_url: str | None,
                  experiment: str | None):
    """The engine to validate a submission with, and the manifest to pin it to: the synced plugins
    (pulled into the local cache) with ``--plugins``, else the local ones."""
    if not plugins:
        return state.engine(experiment), None
    from gnomon.core.engine import Engine
    from gnomon.core.remote.pull import load_synced_plugins, pull

    report = pull(plugins, cache, version=plugins_version, endpoint=endpoint_url)
    return Engine(load_synced_plugins(report.set_dir), experiment=experiment, show_progress=False), report.manifest_id


def submit_workflow_cmd(engine, name: str, overrides: dict, *, queue: str, redis: str | None, manifest_id: str | None,
                        plugins: str | None, retries: int | None, timeout: int | None, wait: bool,
                        wait_timeout: float | None, as_json: bool, preflight: bool = True, resume: bool = False,
                        sweep: list[str] | None = None) -> None:
    """Validate a workflow (file or registered name), then enqueue each of its steps as its own job.

    A sweep (``--sweep`` or the file's ``[sweep]`` table) is validated combination by combination and
    enqueued as one job per distinct step (content key) across all combinations."""
    from gnomon.core.remote import RemoteError, fanout
    from gnomon.core.remote import jobs as rjobs
    from gnomon.core.workflows import apply_overrides, find_workflow
    from gnomon.core.workflows.sweep import parse_sweep, plan_sweep
    from gnomon.core.workflows.validate import plan_workflow

    workflow = find_workflow(engine, name)
    variables = apply_overrides(workflow, overrides)
    matrix = parse_sweep(workflow, sweep, overrides)
    fanout.shared_tracking_uri(engine)
    retries = fanout.DEFAULT_STEP_RETRIES if retries is None else retries
    if matrix is not None:
        from gnomon.core.remote.sweepfanout import submit_sweep

        sweep_plan = plan_sweep(engine, workflow, variables, matrix, preflight=preflight)
        connection = rjobs.connect(redis)
        submission = submit_sweep(engine, connection, sweep_plan, queue_name=queue, manifest_id=manifest_id,
                                  plugins_url=plugins, retries=retries, timeout=timeout, resume=resume)
        what = (f"sweep {workflow.name}: {len(sweep_plan.combinations)} combinations, {sweep_plan.total_steps} steps "
                f"of which {len(submission.jobs)} distinct, queued on '{queue}' as separate jobs; sweep run")
    else:
        plan = plan_workflow(engine, workflow, variables, preflight=preflight)
        connection = rjobs.connect(redis)
        submission = fanout.submit_workflow(
            engine, connection, plan, queue_name=queue, manifest_id=manifest_id, plugins_url=plugins,
            retries=retries, timeout=timeout, resume=resume)
        what = f"workflow {workflow.name}: {len(submission.jobs)} steps queued on '{queue}' as separate jobs; parent run"
    if not wait:
        if as_json:
            print_json({**submission.to_dict(), "sweep": matrix is not None})
        else:
            console().print(f"{what} {submission.run_id}"
                            + (f", plugins manifest {manifest_id}" if manifest_id else ""))
            console().print(f"follow it with: gnomon workflow status {submission.run_id}")
        return
    info = fanout.wait_workflow(connection, submission.run_id, timeout=wait_timeout)
    print_workflow_status(info, as_json)
    if info["state"] != "finished":
        raise RemoteError(f"workflow run {submission.run_id} {info['state']}")


def print_workflow_status(info: dict, as_json: bool) -> None:
    """The table (or JSON) of ``gnomon workflow status``."""
    if as_json:
        print_json(info)
        return
    out = console()
    counts = ", ".join(f"{n} {k}" for k, n in sorted(info["counts"].items()))
    out.print(f"workflow [bold]{info['workflow']}[/bold] run {info['run_id']}: [bold]{info['state']}[/bold] "
              f"({counts}); queue '{info['queue']}', experiment '{info['experiment']}'")
    rows = [[s["step"], s["status"] + (f" ({s['outcome']})" if s.get("outcome") not in (None, "ran") else ""),
             s.get("worker"), s.get("attempts") or "", s.get("run_id"), s.get("job"), (s.get("error") or "")[:80]]
            for s in info["steps"]]
    out.print(table(None, ["step", "state", "worker", "attempts", "run", "job", "error"], rows))


def _print_job(info: dict, as_json: bool) -> None:
    if as_json:
        print_json(info)
        return
    out = console()
    rows = [[k, v] for k, v in info.items() if k not in {"result", "params", "plugins"} and v not in (None, "")]
    if info.get("plugins"):
        rows.append(["plugins", ", ".join(f"{n} {p['version']}" + (" (broken)" if p["broken"] else "")
                                          for n, p in sorted(info["plugins"].items()))])
    rows.insert(2, ["params", " ".join(f"{k}={v}" for k, v in (info.get("params") or {}).items())])
    out.print(table(f"job {info['id']}", ["field", "value"], rows, wrap=["value"]))
    result = info.get("result") or {}
    if result.get("metrics"):
        out.print(table("metrics", ["metric", "value"], [[k, f"{v:.6g}"] for k, v in sorted(result["metrics"].items())]))


@jobs_app.command("list")
@handle_errors
def list_jobs(
    queue: str = typer.Option("gnomon", "--queue", "-q", help=QUEUE_HELP),
    redis: str | None = typer.Option(None, "--redis", help=REDIS_HELP),
    limit: int = typer.Option(50, "--limit", min=1, help="Show at most this many jobs (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Jobs of a queue, newest first: waiting, running, finished, failed, stopped and canceled."""
    from gnomon.core.remote import jobs as rjobs

    entries = rjobs.list_jobs(rjobs.connect(redis), queue, limit=limit)
    if as_json:
        print_json(entries)
        return
    rows = [[e["id"], e["status"], e["task"], e["manifest"], e["enqueued_at"], e["ended_at"], e["run_id"]]
            for e in entries]
    console().print(table(f"queue {queue}", ["job", "status", "task", "manifest", "enqueued", "ended", "run"], rows))


@jobs_app.command("show")
@handle_errors
def show_job(
    job_id: str = typer.Argument(..., help="Job id."),
    redis: str | None = typer.Option(None, "--redis", help=REDIS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """A job's status, task, parameters, manifest, worker, MLflow run, error and result."""
    from gnomon.core.remote import jobs as rjobs

    _print_job(rjobs.describe(rjobs.fetch(rjobs.connect(redis), job_id)), as_json)


@jobs_app.command("cancel")
@handle_errors
def cancel_job(
    job_id: str = typer.Argument(..., help="Job id."),
    redis: str | None = typer.Option(None, "--redis", help=REDIS_HELP),
) -> None:
    """Cancel a waiting job, or stop a running one."""
    from gnomon.core.remote import jobs as rjobs

    outcome = rjobs.cancel(rjobs.connect(redis), job_id)
    console().print(f"job {job_id}: {outcome}")


def install(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("submit")(submit)
    app.add_typer(jobs_app, name="jobs")
