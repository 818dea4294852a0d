"""``gnomon ui``: open MLflow's web UI on gnomon's tracking store."""

from __future__ import annotations

import typer

from ..main import handle_errors


@handle_errors
def ui(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(5000, help="Port."),
) -> None:
    """Start `mlflow ui` on the store gnomon uses (the embedded one unless MLFLOW_TRACKING_URI is set)."""
    import os
    import shutil
    import sys

    from gnomon.core.errors import GnomonError
    from gnomon.core.tracking import default_tracking_uri, gnomon_home, is_embedded

    uri = default_tracking_uri()
    if not is_embedded(uri):
        raise GnomonError(f"MLFLOW_TRACKING_URI is {uri}: open that server's UI instead")
    mlflow = shutil.which("mlflow") or str(__import__("pathlib").Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--default-artifact-root",
           (gnomon_home() / "artifacts").resolve().as_uri(), "--host", host, "--port", str(port)]
    typer.echo(f"MLflow UI for {uri} on http://{host}:{port}", err=True)
    os.execv(cmd[0], cmd)


def install(app: typer.Typer) -> None:
    app.command("ui")(ui)
