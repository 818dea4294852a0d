"""The run context handed to every task: tracking, artifacts, progress, seeded randomness."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("gnomon.task")


@dataclass
class RunContext:
    """Everything a task needs besides its parameters.

    Attributes:
        task: the task's name.
        run_id: the MLflow run id (``None`` for a dry run).
        params: validated parameters.
        seed: the run's seed; :meth:`seed_everything` has already been called with it.
        rng: a ``numpy.random.Generator`` seeded with ``seed``: use it for every random choice.
        engine: the :class:`gnomon.core.engine.Engine` running the task (its registry
            holds models, triggers and defenses).
        workdir: a temporary folder, removed after the run.
        outputs: values later workflow steps can refer to (``ctx.output(k, v)``).
        console: a ``rich`` console on stderr for progress and messages.
    """

    task: str
    run_id: str | None
    params: dict[str, Any]
    seed: int
    engine: Any
    experiment_name: str = ""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gnomon-")))
    outputs: dict[str, Any] = field(default_factory=dict)
    show_progress: bool = True
    _console: Any = None
    _rng: Any = None

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

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tag(self, key: str, value: Any) -> None:
        import mlflow

        mlflow.set_tag(key, str(value))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)

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
        """Record an output that later workflow steps can refer to (also a run tag)."""
        self.outputs[key] = value
        if self.run_id:
            self.set_tag(f"gnomon.output.{key}", value)

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

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)
