"""How runs end: signals become exceptions, each run records its process, orphans are found.

Every way a run can end must leave it FINISHED, FAILED or KILLED, never RUNNING:

* an exception marks it FAILED and SIGINT (KeyboardInterrupt) KILLED (:class:`gnomon.core.engine.Engine`);
* SIGTERM and SIGHUP (``timeout``, systemd, Kubernetes, ``kill``, a closed terminal) would kill
  Python without unwinding; the CLI turns them into :class:`Terminated`, which the engine treats
  like Ctrl-C (KILLED), then the process dies of the same signal;
* SIGKILL (or a power cut) cannot be caught: each run carries tags naming its host, PID namespace,
  PID and process start time (:func:`process_tags`), and the next gnomon process on that host that
  opens the store marks RUNNING runs whose process is gone as FAILED (:func:`reap_orphans`);
* a job stopped by ``gnomon jobs cancel`` or abandoned by a dead worker is marked by the worker's
  RQ callbacks (:mod:`gnomon.core.remote.worker`).
"""

from __future__ import annotations

import os
import signal
import socket

HOST_TAG = "gnomon.host"
PID_TAG = "gnomon.pid"
PIDNS_TAG = "gnomon.pidns"
START_TAG = "gnomon.process_start"
ERROR_TAG = "gnomon.error"

#: Signals the CLI turns into :class:`Terminated`.
HANDLED = ("SIGTERM", "SIGHUP")


class Terminated(BaseException):
    """The process received SIGTERM or SIGHUP; the run ends KILLED and the signal is re-raised."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (main thread only; no-op elsewhere)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _raise(signum, frame):
        # once is enough: a second signal while cleaning up must not interrupt the cleanup
        for name in HANDLED:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        raise Terminated(signum)

    for name in HANDLED:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _raise)


def die_of(signum: int) -> None:
    """End this process by ``signum`` with its default action, as if it had not been caught."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


# -- process identity and orphans ---------------------------------------------------------
def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), else ''."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return ""


def process_tags() -> dict[str, str]:
    """Tags naming this process, so a later process can tell whether it is still alive."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), PIDNS_TAG: _pid_namespace(),
            START_TAG: _start_time(os.getpid())}


def is_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process named by a run's tags lives; None if it ran elsewhere (cannot tell)."""
    if tags.get(HOST_TAG) != socket.gethostname() or tags.get(PIDNS_TAG, "") != _pid_namespace():
        return None
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started = tags.get(START_TAG)
    if started and _start_time(pid) and _start_time(pid) != started:
        return False  # the PID was reused by a newer process
    return True


def reap_orphans(client) -> list[str]:
    """Mark FAILED the RUNNING runs of dead processes on this host; returns their run ids."""
    from mlflow.entities import ViewType

    host = socket.gethostname().replace("'", "")
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    reaped = []
    for start in range(0, len(experiments), 100):
        runs = client.search_runs(experiments[start:start + 100],
                                  filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
                                  run_view_type=ViewType.ALL, max_results=10000)
        for run in runs:
            tags = run.data.tags
            if is_alive(tags) is False:
                client.set_tag(run.info.run_id, ERROR_TAG,
                               f"orphaned: its process {tags.get(PID_TAG)} on {tags.get(HOST_TAG)} died "
                               "without ending the run (SIGKILL, out of memory or power loss)")
                client.set_terminated(run.info.run_id, status="FAILED")
                reaped.append(run.info.run_id)
    return reaped
