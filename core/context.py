"""The contexts handed to tasks: :class:`CheckContext` to ``check(ctx, params)`` before any run
exists, :class:`RunContext` to ``fn(ctx, **params)`` during the run.

Both are :class:`TaskContext`: the task's name and parameters, the engine's registry and
store, the tracking client, progress and messages. Helpers that need any of these take a
``TaskContext``; helpers that only need the engine's services (registry, store, tracking)
take :class:`Services`, which an :class:`~gnomon.core.engine.Engine` also provides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from .engine import Engine
    from .registry import Registry
    from .store import Store

log = logging.getLogger("gnomon.task")

#: Run tag written when a run ends: what it logged that a workflow report reads back (see
#: :meth:`RunContext.logged_summary`), so the report asks the tracking store for nothing else.
LOGGED_TAG = "gnomon.logged"
#: The artifact a step logs to get its own part of a workflow report (``report_sections``).
SECTION_FILE = "report_section.json"
#: The longest value MLflow keeps in a run tag (an output is one).
MAX_TAG_CHARS = 8000


class Services(Protocol):
    """What helpers need of the engine: an :class:`Engine` and every :class:`TaskContext` provide it."""

    @property
    def registry(self) -> Registry: ...

    @property
    def store(self) -> Store: ...

    @property
    def tracking_uri(self) -> str: ...

    def mlflow_client(self) -> MlflowClient: ...


@dataclass(kw_only=True)
class TaskContext:
    """What both a task's ``check`` and its run get.

    Attributes:
        task: the task's name.
        engine: the :class:`gnomon.core.engine.Engine` running the task.
        params: the validated parameters.
        show_progress: whether progress bars and messages are shown.
    """

    task: str
    engine: Engine
    params: dict[str, Any] = field(default_factory=dict)
    show_progress: bool = True
    _console: Any = None

    # -- the engine's services ------------------------------------------------
    @property
    def registry(self) -> Registry:
        """Every registered task, model, attack, defense and workflow."""
        return self.engine.registry

    @property
    def store(self) -> Store:
        """The engine's in-process store (datasets, models, what a check hands to its run)."""
        return self.engine.store

    @property
    def tracking_uri(self) -> str:
        return self.engine.tracking_uri

    def mlflow_client(self) -> MlflowClient:
        """A client of the engine's tracking store."""
        return self.engine.mlflow_client()

    def dataset_source(self) -> dict[str, str]:
        """The task's ``DatasetSource(...)`` settings (``run_id_field``, ``data_dir_field``,
        ``default_split``), from its schema; empty when the task reads no dataset."""
        schema = self.registry.tasks[self.task].schema if self.task in self.registry.tasks else None
        return dict(getattr(schema, "__dataset_source__", None) or {})

    # -- people -------------------------------------------------------------
    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def info(self, message: str) -> None:
        log.info(message)
        if self.show_progress:
            self.console.print(f"[dim]{self.task}[/dim] {message}")

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None = None) -> Iterator[Any]:
        """A rich progress bar; yields ``advance(n=1)``. Silent when progress is off."""
        if not self.show_progress:
            yield lambda n=1: None
            return
        from .datasets._util import rich_progress

        with rich_progress(description, total=total, console=self.console) as advance:
            yield advance


@dataclass(kw_only=True)
class CheckContext(TaskContext):
    """What ``check(ctx, params)`` gets: no MLflow run exists yet and nothing may be written.

    A check may load what the run will need and hand it over through ``ctx.store``
    (:meth:`gnomon.core.store.Store.keep_for_run`); it runs once per run.

    Attributes:
        task: the task's name.
        engine: the :class:`gnomon.core.engine.Engine` running the task.
        params: the validated parameters.
        show_progress: whether progress bars and messages are shown.
        registry: every registered task, model, attack, defense and workflow.
        store: the engine's in-process store (datasets, models, what a check hands to its run).
    """


@dataclass(kw_only=True)
class RunContext(TaskContext):
    """What ``fn(ctx, **params)`` gets: everything a task needs besides its parameters.

    Everything a :class:`CheckContext` has (``task``, ``params``, ``registry``, ``store``,
    ``mlflow_client()``, ``progress``, ``info``, ``dataset_source()``), and the run itself.

    Attributes:
        run_id: the MLflow run id (``None`` for a dry run).
        seed: the run's seed; :meth:`seed_everything` has already been called with it.
        rng: a ``numpy.random.Generator`` seeded with ``seed``: use it for every random choice.
        workdir: a temporary folder, removed after the run.
        outputs: values later workflow steps can refer to (``ctx.output(k, v)``).
        console: a ``rich`` console on stderr for progress and messages.
    """

    run_id: str | None
    seed: int
    experiment_name: str = ""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gnomon-")))
    outputs: dict[str, Any] = field(default_factory=dict)
    _rng: Any = None
    _metric_log: dict[str, tuple[int, bool]] = field(default_factory=dict)  # key -> (times logged, any step >= 1)
    _section: bool = False

    # -- randomness ---------------------------------------------------------
    @property
    def rng(self):
        if self._rng is None:
            import numpy as np

            self._rng = np.random.default_rng(self.seed)
        return self._rng

    def seed_everything(self) -> None:
        """Seed Python, NumPy and (if imported later by the task) TensorFlow/Keras."""
        random.seed(self.seed)
        try:
            import numpy as np

            np.random.seed(self.seed % (2**32))
        except ImportError:  # pragma: no cover
            pass

    def seed_tensorflow(self) -> None:
        """Seed TensorFlow and Keras and ask for deterministic ops (call after importing tf)."""
        import keras
        import tensorflow as tf

        keras.utils.set_random_seed(self.seed % (2**32))
        try:
            tf.config.experimental.enable_op_determinism()
        except Exception:  # pragma: no cover - older TF
            pass

    # -- tracking -----------------------------------------------------------
    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        import mlflow

        mlflow.log_metric(key, float(value), step=step)
        self._note_metrics([key], step)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        self._note_metrics(metrics, step)

    def _note_metrics(self, keys, step: int | None) -> None:
        for key in keys:
            count, stepped = self._metric_log.get(key, (0, False))
            self._metric_log[key] = (count + 1, stepped or (step or 0) >= 1)

    def logged_summary(self) -> dict[str, Any]:
        """What this run logged through the context that a workflow report needs: ``curves``, the metrics
        logged more than once or with a step >= 1 (their history is a curve), and ``section``, whether
        it logged :data:`SECTION_FILE`. Stored as the :data:`LOGGED_TAG` tag when the run ends."""
        curves = sorted(k for k, (count, stepped) in self._metric_log.items() if count > 1 or stepped)
        return {"curves": curves, "section": self._section}

    def set_tag(self, key: str, value: Any) -> None:
        import mlflow

        mlflow.set_tag(key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)
        if Path(path).name == SECTION_FILE and artifact_path in (None, "", "."):
            self._section = True

    def log_json(self, obj: Any, artifact_file: str) -> None:
        """Write ``obj`` as JSON to the run's artifacts."""
        target = self.workdir / Path(artifact_file).name
        target.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        parent = str(Path(artifact_file).parent)
        self.log_artifact(target, None if parent in ("", ".") else parent)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        import mlflow

        mlflow.log_figure(figure, artifact_file)

    def output(self, key: str, value: Any) -> None:
        """Record an output that later workflow steps can refer to (a ``gnomon.output.KEY`` run tag, written
        with the run's other end-of-run tags in one request when the task returns)."""
        if len(str(value)) > MAX_TAG_CHARS:
            raise ValueError(f"output '{key}' is {len(str(value))} characters long; a run tag holds at most "
                             f"{MAX_TAG_CHARS} (log it as an artifact instead)")
        self.outputs[key] = value

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)
