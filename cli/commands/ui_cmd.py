"""``gnomon ui``: MLflow's web UI on gnomon's tracking store, opened on the experiment's runs."""

from __future__ import annotations

import typer

from ..main import handle_errors


@handle_errors
def ui(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(5000, help="Port."),
    experiment: str | None = typer.Option(None, "--experiment", "-e", envvar="GNOMON_EXPERIMENT",
                                          help="Experiment whose runs page to show (default: gnomon)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the runs page in a web browser."),
) -> None:
    """Start `mlflow ui` on the store gnomon uses and print the URL of the experiment's runs page.

    With MLFLOW_TRACKING_URI pointing at an `mlflow server`, nothing is started: the runs page
    of that server is printed (and opened with --open).
    """
    import os
    import signal
    import subprocess
    import sys

    from gnomon.core.errors import GnomonError
    from gnomon.core.quiet import verbose
    from gnomon.core.tracking import (
        default_tracking_uri,
        describe_uri,
        ensure_experiment,
        experiment_name,
        gnomon_home,
        is_embedded,
        runs_page_url,
        setup_tracking,
    )

    uri = default_tracking_uri()
    name = experiment_name(experiment)
    if not is_embedded(uri):
        if not uri.startswith(("http://", "https://")):
            raise GnomonError(f"MLFLOW_TRACKING_URI is {uri}: open that store's UI instead")
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(uri)  # the page's URL without the credentials a tracking URI may carry
        base = urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))
        url = runs_page_url(base, ensure_experiment(name, setup_tracking(uri)))
        typer.echo(f"experiment '{name}' on {describe_uri(uri)}: {url}")
        _open(url, open_browser)
        return

    experiment_id = ensure_experiment(name, setup_tracking(uri))
    # the mlflow module of this interpreter: its console script may live in another virtualenv's bin
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root",
           (gnomon_home() / "artifacts").resolve().as_uri(), "--host", host, "--port", str(port),
           "--workers", "1"]  # one user: one worker starts several times faster than MLflow's default 4
    env = dict(os.environ)
    # MLflow's job runner (four huey consumer processes, ~1 GB) serves its GenAI features, not runs
    # pages; a user who wants it sets the variable themselves.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if not verbose():  # the server's request log and its libraries' deprecation notes
        cmd += ["--uvicorn-opts", "--log-level warning"]
        env.update(MLFLOW_LOGGING_LEVEL="WARNING", PYTHONWARNINGS="ignore")
    browse_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = f"http://{browse_host}:{port}"
    typer.echo(f"starting the MLflow UI for {uri} ...", err=True)
    # its own process group, so that stopping it also stops the workers and job runners it starts
    server = subprocess.Popen(cmd, env=env, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _wait_until_up(base, server)
        url = runs_page_url(base, experiment_id)
        typer.echo(f"experiment '{name}' runs: {url}")
        typer.echo("press Ctrl-C to stop", err=True)
        _open(url, open_browser)
        code = server.wait()
        raise typer.Exit(code)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(server)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop(server) -> None:
    """Stop the UI's process group: SIGTERM, then SIGKILL after 15 s."""
    import os
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_until_up(base: str, server, timeout: float = 600.0) -> None:
    """Poll MLflow's ``/health`` until it answers; a server that exits first is an error."""
    import time
    import urllib.request

    from gnomon.core.errors import GnomonError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise GnomonError(f"the MLflow UI exited with status {server.returncode} before it served {base} "
                              "(is the port already in use? try --port)")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise GnomonError(f"the MLflow UI did not answer on {base} within {timeout:.0f} s")


def _open(url: str, wanted: bool) -> None:
    if not wanted:
        return
    import webbrowser

    if not webbrowser.open(url):
        typer.echo("no web browser found here; open the URL above yourself", err=True)


def install(app: typer.Typer) -> None:
    app.command("ui")(ui)
