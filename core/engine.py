"""The engine: the Python API over plugins, validation and tracked runs. The CLI is a thin layer on it.

Example::

    from gnomon.core.engine import Engine
    engine = Engine()
    result = engine.run("train", {"epochs": 3, "model_architecture": "le_net"})
    print(result.run_id, result.metrics["accuracy"])
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .context import CheckContext
from .errors import GnomonError, ParamValidationError, TaskFailedError, UnknownNameError
from .jsonable import jsonable
from .params import validate_params
from .plugins import PluginSet, load_plugins
from .registry import Registry
from .store import Store
from .tasks import Task
from .tracking import default_tracking_uri, experiment_name


@dataclass
class RunResult:
    """What a finished run produced."""

    run_id: str
    task: str
    status: str
    experiment_id: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    #: ``"ExceptionType: message"`` of a FAILED or KILLED run (what ``after_run`` hooks see)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "task": self.task,
            "status": self.status,
            "experiment_id": self.experiment_id,
            "params": {k: jsonable(v) for k, v in self.params.items()},
            "metrics": self.metrics,
            "outputs": {k: jsonable(v) for k, v in self.outputs.items()},
            "duration_s": round(self.duration_s, 3),
            **({"error": self.error} if self.error is not None else {}),
        }


class Engine:
    """Lists tasks, validates parameters and runs tasks as MLflow runs.

    Args:
        plugins: a loaded :class:`PluginSet`; default: :func:`load_plugins` from the environment.
        tracking_uri: MLflow tracking URI; default: ``MLFLOW_TRACKING_URI`` or the embedded store.
        experiment: experiment name; default: ``GNOMON_EXPERIMENT`` or ``gnomon``.
        show_progress: draw rich progress bars on stderr.
    """

    def __init__(self, plugins: PluginSet | None = None, *, tracking_uri: str | None = None,
                 experiment: str | None = None, show_progress: bool = True):
        self.plugins = plugins if plugins is not None else load_plugins()
        self._tracking_uri = tracking_uri
        self.experiment = experiment_name(experiment)
        self.show_progress = show_progress
        self._tracking_ready = False
        self._experiment_id: tuple[tuple[str, str] | None, str] = (None, "")
        self._known_experiment_id: str | None = None
        #: datasets, loaded models and check->run handoffs of this engine (see :mod:`gnomon.core.store`)
        self.store = Store()

    # -- discovery ----------------------------------------------------------
    @property
    def registry(self) -> Registry:
        return self.plugins.registry

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri or default_tracking_uri()

    def tasks(self) -> list[Task]:
        return [self.registry.tasks[n] for n in sorted(self.registry.tasks)]

    def task(self, name: str) -> Task:
        """The task called ``name``; an unknown name suggests the closest ones."""
        try:
            return self.registry.tasks[name]
        except KeyError:
            raise UnknownNameError("task", name, list(self.registry.tasks)) from None

    # -- validation ---------------------------------------------------------
    def validate(self, task: str | Task, params: dict[str, Any] | None = None, *, preflight: bool = True,
                 keep_checks: bool = False) -> dict[str, Any]:
        """Convert and check ``params``; raises :class:`ParamValidationError` listing every bad field.

        With ``preflight`` the task's ``check`` also runs (it may consult the tracking
        store, e.g. to verify that a model exists). Nothing is written. What the check loaded
        for the run (:meth:`Store.keep_for_run`) is freed unless ``keep_checks`` (a run follows).
        """
        task = self.task(task) if isinstance(task, str) else task
        values = validate_params(task, params or {}, self.registry)
        if preflight and task.check is not None:
            problems: dict = {}
            try:
                problems = task.check(self.check_context(task, values), values) or {}
            finally:
                if problems or not keep_checks:
                    self.store.release_checks()
            if problems:
                raise ParamValidationError(task.name, problems)
        return values

    def check_context(self, task: Task, values: dict[str, Any]) -> CheckContext:
        """The context a task's ``check(ctx, params)`` gets (no run exists yet)."""
        return CheckContext(task=task.name, engine=self, params=values, show_progress=self.show_progress)

    # -- tracking -----------------------------------------------------------
    def ensure_tracking(self) -> str:
        """Point MLflow at the tracking store and return the experiment id."""
        from .tracking import ensure_experiment, setup_tracking

        uri = setup_tracking(self.tracking_uri)  # every time: another engine may have moved MLflow's global URI
        self._tracking_ready = True
        if self._experiment_id[0] != (uri, self.experiment):  # one lookup per engine, not one per run
            known, self._known_experiment_id = self._known_experiment_id, None
            self._experiment_id = ((uri, self.experiment), known or ensure_experiment(self.experiment, uri))
        return self._experiment_id[1]

    def use_experiment_id(self, experiment_id: str) -> None:
        """Take ``experiment_id`` as the id of this engine's experiment instead of looking it up (a worker's
        job whose submitter already resolved it on the same tracking server)."""
        self._known_experiment_id = experiment_id
        self._experiment_id = (None, "")

    def mlflow_client(self):
        import mlflow

        if not self._tracking_ready:
            self.ensure_tracking()
        return mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    # -- running ------------------------------------------------------------
    def run(self, task: str | Task, params: dict[str, Any] | None = None, *, run_name: str | None = None,
            tags: dict[str, str] | None = None, nested: bool = False, validated: bool = False) -> RunResult:
        """Validate ``params``, then run the task as an MLflow run and return its result.

        Invalid parameters raise :class:`ParamValidationError` before any run exists.
        A task that raises leaves its run FAILED (error tag and ``error.txt``) and
        raises :class:`TaskFailedError`.
        """
        task = self.task(task) if isinstance(task, str) else task
        values = dict(params or {}) if validated else self.validate(task, params, keep_checks=True)
        experiment_id = self.ensure_tracking()

        import mlflow

        from . import __version__
        from .context import RunContext

        seed = int(values.get("seed", 0) or 0)
        info = self.plugins.infos.get(task.plugin)
        from .environment import fingerprint_tags
        from .lifecycle import Terminated, process_tags
        from .redact import format_exception, redact

        run_tags = {
            **process_tags(),
            **fingerprint_tags(),
            "gnomon.task": task.name,
            "gnomon.plugin": task.plugin,
            "gnomon.plugin_version": info.version if info else "",
            "gnomon.version": __version__,
            "gnomon.seed": str(seed),
            **(tags or {}),
        }
        started = time.perf_counter()
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or task.name,
                              nested=nested, tags=run_tags) as active:
            run_id = active.info.run_id
            _know_artifact_location(self.tracking_uri, run_id, active.info.artifact_uri)
            ctx = RunContext(task=task.name, run_id=run_id, params=values, seed=seed, engine=self,
                             experiment_name=self.experiment, show_progress=self.show_progress)
            failure: BaseException | None = None
            status = "FINISHED"
            try:  # from here on, every way out ends the run FINISHED, FAILED or KILLED
                mlflow.log_params({k: _param_str(v) for k, v in values.items()})
                ctx.seed_everything()
                self.plugins.call_before_run(ctx)
                returned = task.fn(ctx, **values)
                if isinstance(returned, dict):
                    for key, value in returned.items():
                        if key not in ctx.outputs:
                            ctx.output(key, value)
            except (KeyboardInterrupt, Terminated) as exc:
                failure, status = exc, "KILLED"
                mlflow.set_tag("gnomon.error", "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc))
            except BaseException as exc:
                failure, status = exc, "FAILED"
                mlflow.set_tag("gnomon.error", redact(f"{type(exc).__name__}: {exc}")[:5000])
                try:
                    (ctx.workdir / "error.txt").write_text(format_exception(exc))
                    mlflow.log_artifact(str(ctx.workdir / "error.txt"))
                except Exception:  # pragma: no cover - never mask the task's error
                    pass
            duration = time.perf_counter() - started
            # one request: the outputs, the wall time and what a workflow report will read back
            if failure is None:
                _log_end(self.tracking_uri, run_id, ctx.outputs, duration, ctx.logged_summary())
            else:
                try:
                    _log_end(self.tracking_uri, run_id, ctx.outputs, None, {})
                except Exception:  # pragma: no cover - never mask the task's error
                    pass
            run = mlflow.MlflowClient(tracking_uri=self.tracking_uri).get_run(run_id)
            result = RunResult(run_id=run_id, task=task.name, status=status, experiment_id=experiment_id,
                               params=values, metrics=dict(run.data.metrics), outputs=dict(ctx.outputs),
                               duration_s=duration,
                               error=None if failure is None else redact(f"{type(failure).__name__}: {failure}"))
            hook_errors = self._after_run(ctx, result)
            if failure is not None:
                mlflow.end_run(status=status)
        ctx.cleanup()
        if isinstance(failure, (KeyboardInterrupt, Terminated)):
            raise failure
        if failure is not None:
            raise TaskFailedError(task.name, run_id, failure) from failure
        if hook_errors and self.plugins.strict:
            raise hook_errors[0]
        return result

    def _after_run(self, ctx, result: RunResult) -> list[GnomonError]:
        """Every plugin's ``after_run``; errors are reported and tagged, never change the result."""
        import sys

        import mlflow

        errors = self.plugins.call_after_run(ctx, result)
        for error in errors:
            sys.stderr.write(f"warning: {error}\n")
            try:
                mlflow.set_tag(f"gnomon.hook_error.{error.plugin}", str(error)[:5000])
            except Exception:  # pragma: no cover - never mask the run's own outcome
                pass
        return errors


def _know_artifact_location(tracking_uri: str, run_id: str, artifact_uri: str) -> None:
    """Tell MLflow where the new run's artifacts go, as its run-creation answer said: otherwise its first
    ``log_artifact`` reads the run back from the tracking server only to learn it (one request per run)."""
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.tracking._tracking_service import utils
        from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

        cache = utils._artifact_repos_cache
        if run_id not in cache:
            uri = add_databricks_profile_info_to_artifact_uri(artifact_uri, tracking_uri)
            cache[run_id] = get_artifact_repository(uri, tracking_uri=tracking_uri)
    except Exception:  # MLflow internals: without them MLflow simply looks the location up itself
        pass


def _log_end(tracking_uri: str, run_id: str, outputs: dict[str, Any], duration: float | None,
             logged: dict[str, Any]) -> None:
    """The run's outputs (``gnomon.output.*`` tags) and, for a finished run, its wall time and the
    :data:`~gnomon.core.context.LOGGED_TAG` summary, in one request."""
    import json

    import mlflow
    from mlflow.entities import Metric, RunTag

    from .context import LOGGED_TAG

    tags = [RunTag(f"gnomon.output.{key}", str(value)) for key, value in outputs.items()]
    metrics = []
    if duration is not None:
        metrics.append(Metric("gnomon_wall_time_s", duration, int(time.time() * 1000), 0))
        tags.append(RunTag(LOGGED_TAG, json.dumps(logged, separators=(",", ":"))))
    if tags or metrics:
        mlflow.MlflowClient(tracking_uri=tracking_uri).log_batch(run_id, metrics=metrics, tags=tags)


def _param_str(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def debug_enabled() -> bool:
    """``GNOMON_DEBUG`` (see :mod:`gnomon.core.settings`)."""
    from . import settings

    return settings.debug()
