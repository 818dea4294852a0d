"""Small helpers shared by the dataset modules: workers, progress, atomic writes, natural sort."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key where ``"2.png" < "10.png"``."""
    stem, dot, ext = name.partition(".")
    if stem.isdigit() and ext.isalpha():  # "123.png": fast path, same result as the general one
        return ("", int(stem), dot + ext)
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(name))


def worker_count(n_items: int, per_worker_min: int = 2000) -> int:
    """How many processes to use for ``n_items`` (``GNOMON_WORKERS`` overrides; 1 = in-process)."""
    from .. import settings

    env = settings.number("GNOMON_WORKERS", 0)
    if env >= 1:
        return int(env)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, n_items // per_worker_min))


_THREADED_RUNTIMES = ("tensorflow", "torch", "jax")


def process_pool(workers: int):
    """A process pool for CPU-bound decoding/encoding.

    ``fork`` (fast, no re-import of ``__main__``) while no multi-threaded ML runtime is loaded;
    ``forkserver`` once TensorFlow/torch/jax are imported (forking their thread pools is unsafe).
    """
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and not any(name in sys.modules for name in _THREADED_RUNTIMES):
        method = "fork"
    else:
        method = "forkserver" if "forkserver" in methods else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))


def run_chunks(fn, chunks: list[tuple], workers: int, advance, sizes: list[int]) -> list:
    """``[fn(*args) for args in chunks]``, in ``workers`` processes when > 1, calling ``advance(size)``
    as each finishes (in order). A pool that cannot start (e.g. ``__main__`` not importable by
    forkserver) falls back to running in this process.
    """
    from concurrent.futures.process import BrokenProcessPool

    if workers > 1 and len(chunks) > 1:
        results = []
        try:
            with process_pool(workers) as pool:
                futures = [pool.submit(fn, *args) for args in chunks]
                for future, size in zip(futures, sizes, strict=True):
                    results.append(future.result())
                    advance(size)
            return results
        except BrokenProcessPool:
            import warnings

            warnings.warn("worker processes could not start; continuing in this process", RuntimeWarning, stacklevel=3)
            done = len(results)
            for args, size in zip(chunks[done:], sizes[done:], strict=True):
                results.append(fn(*args))
                advance(size)
            return results
    results = []
    for args, size in zip(chunks, sizes, strict=True):
        results.append(fn(*args))
        advance(size)
    return results


ProgressFactory = Callable[..., Any]


@contextlib.contextmanager
def rich_progress(description: str, total: float | None = None, console: Any = None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar (on stderr unless ``console`` is given) yielding ``advance(n=1)``.

    The one progress bar of gnomon: ``RunContext.progress`` uses it too.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        tid = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(tid, n)


@contextlib.contextmanager
def no_progress(description: str, total: float | None = None) -> Iterator[Callable[[int], None]]:
    yield lambda n=1: None


def resolve_progress(progress: Any) -> ProgressFactory:
    """``progress`` may be None/True (rich bar), False (silent), a RunContext, or a ``progress(desc, total)`` factory."""
    if progress is None or progress is True:
        return rich_progress
    if progress is False:
        return no_progress
    if hasattr(progress, "progress") and callable(progress.progress):
        return progress.progress
    return progress


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def gnomon_home() -> Path:
    from gnomon.core.tracking import gnomon_home as _home

    return _home()
