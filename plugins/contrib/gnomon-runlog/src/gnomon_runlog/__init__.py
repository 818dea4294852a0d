"""gnomon plugin: one JSON line per task run, appended to a file.

An example of the run-lifecycle hooks: ``before_run`` stamps the start time on the run,
``after_run`` appends ``{"task", "run_id", "status", "error", "metrics", ...}`` as one line to
``$GNOMON_RUNLOG`` (default ``$GNOMON_HOME/runlog.jsonl``). It sees every run, failed and
interrupted ones included. Lines from concurrent processes never interleave: each is one
``write`` on a file opened for appending, under an exclusive lock.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gnomon.core.hookspecs import hookimpl

GNOMON_HOOK_API = "1"

#: This plugin's own variable (a plugin's settings are its own, not gnomon.core.settings').
ENV_FILE = "GNOMON_RUNLOG"


def log_path() -> Path:
    """Where the lines go: ``$GNOMON_RUNLOG``, else ``$GNOMON_HOME/runlog.jsonl``."""
    from gnomon.core import settings

    explicit = os.environ.get(ENV_FILE)
    return Path(explicit).expanduser() if explicit else settings.home() / "runlog.jsonl"


@hookimpl
def before_run(ctx):
    ctx.set_tag("runlog.started_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


@hookimpl
def after_run(ctx, result):
    from gnomon.core.jsonable import jsonable

    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "experiment": ctx.experiment_name,
        "task": result.task,
        "run_id": result.run_id,
        "status": result.status,
        "error": result.error,
        "seed": ctx.seed,
        "duration_s": round(result.duration_s, 3),
        "params": jsonable(result.params),
        "metrics": jsonable(result.metrics),
        "outputs": jsonable(result.outputs),
    }
    append_line(log_path(), json.dumps(record, sort_keys=True))


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline to ``path`` in one locked write (safe across processes)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)  # closing releases the lock
