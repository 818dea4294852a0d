"""Builtin part: extra ``gnomon`` commands. ``gnomon data mnist`` prepares MNIST; ``gnomon data cache`` manages
the decoded-dataset cache. Only typer is imported here; the work happens inside the command functions.
"""

from __future__ import annotations

from pathlib import Path

import typer

from gnomon.core.hookspecs import hookimpl


def _data_app() -> typer.Typer:
    data_app = typer.Typer(help="Obtain and inspect image datasets (MNIST, the decoded-dataset cache).",
                           no_args_is_help=True)

    @data_app.command("mnist")
    def mnist(
        dest: Path | None = typer.Option(None, "--dest", help="Output folder. Default: $GNOMON_HOME/data/mnist."),
        source: str | None = typer.Option(
            None, "--source", envvar="GNOMON_MNIST_SOURCE",
            help="Folder of the four MNIST IDX files (.gz or not) or a URL prefix. Default: GNOMON_MNIST_SOURCE, "
                 "else the public mirrors."),
        force: bool = typer.Option(False, "--force", help="Rebuild even if DEST already holds this data."),
    ) -> None:
        """Write MNIST as DEST/training/<label>/<n>.png and DEST/testing/<label>/<n>.png (sha256-verified).

        The sha256 of each uncompressed IDX file must be full MNIST's or be listed in a SHA256SUMS file next to the files. Running it again with the same data does nothing; an interrupted run leaves no half-written DEST. Offline, point it at a local copy: --source DIR or GNOMON_MNIST_SOURCE=DIR.
        """
        from gnomon.core.datasets.mnist import prepare_mnist

        result = prepare_mnist(dest, source, force=force)
        counts = ", ".join(f"{k}: {result.counts[k]}" for k in ("training", "testing") if k in result.counts)
        if result.created:
            typer.echo(f"MNIST ready in {result.dest} ({counts}; sha256 verified, from {result.source})")
        else:
            typer.echo(f"MNIST already prepared in {result.dest} ({counts}); nothing to do")

    @data_app.command("info")
    def info(path: Path = typer.Argument(..., help="Folder of class subfolders of images.")) -> None:
        """Show a dataset folder's classes, image count and provenance (no decoding)."""
        from gnomon.core.datasets.folder import scan_folder

        scan = scan_folder(path)
        counts = {c: 0 for c in scan.class_names}
        for label in scan.labels:
            counts[scan.class_names[int(label)]] += 1
        typer.echo(f"{scan.root}: {len(scan.files)} images, {len(scan.class_names)} classes")
        for cls, n in counts.items():
            typer.echo(f"  {cls}: {n}")
        extra = {k: v for k, v in scan.manifest.items() if k not in ("files", "class_names")}
        if extra:
            import json

            typer.echo("metadata: " + json.dumps(extra, sort_keys=True, default=str)[:2000])

    @data_app.command("cache")
    def cache(clear: bool = typer.Option(False, "--clear", help="Delete every cached array.")) -> None:
        """Show (or clear) the decoded-dataset cache in $GNOMON_HOME/cache/datasets."""
        from gnomon.core.datasets.folder import cache_dir, clear_cache

        folder = cache_dir()
        if clear:
            typer.echo(f"removed {clear_cache()} cached array(s) from {folder}")
            return
        files = sorted(folder.glob("*.npy")) if folder.is_dir() else []
        size = sum(f.stat().st_size for f in files)
        typer.echo(f"{folder}: {len(files)} cached array(s), {size / 1e6:.1f} MB")

    return data_app


@hookimpl
def register_commands(cli) -> None:
    """Add the ``data`` command group."""
    cli.add_typer(_data_app(), name="data")
