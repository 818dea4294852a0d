"""The engine's in-process store: datasets, loaded models, and what a task's check hands to its run.

Every :class:`~gnomon.core.engine.Engine` owns one :class:`Store` (``engine.store``); a task's
``check(ctx, params)`` and its run ``fn(ctx, **params)`` reach the same one as ``ctx.store``
(and the helpers reach it through the :class:`~gnomon.core.context.Services` they are given). Nothing
here is module-level state: two engines never share entries, and an engine's entries go when
the engine goes.

- ``datasets``: decoded datasets of FINISHED runs' artifacts (and ones this process wrote, served
  once their run FINISHED) **and** the datasets a task's ``check`` loaded for the run that follows
  (:meth:`keep_for_run` / :meth:`take_for_run`). One budget bounds them all:
  ``GNOMON_DATASET_MEMO_MB`` (read at use time; least recently used entries go first, 0 = off).
- ``models``: registered models loaded by ``load_registered_model`` (``GNOMON_MODEL_MEMO``
  models, 0 = off). Predictions are remembered on each model object (see
  :func:`gnomon.core.models.predict`), so they go with the model.

Who frees what: :meth:`Engine.run` takes the check's dataset for the run (and drops whatever
the check left that the run did not take); :meth:`Engine.validate` without a run, ``workflow
validate`` and ``submit`` call :meth:`release_checks`, so validation alone keeps nothing.
"""

from __future__ import annotations

from typing import Any, Hashable

CHECK = "check"  # first element of the key of a dataset a check keeps for its run


class Store:
    """Engine-owned caches with one memory budget for datasets and a count budget for models."""

    def __init__(self) -> None:
        self._datasets = None
        self._models = None
        self._checks: set = set()

    @property
    def datasets(self):
        """The dataset memo (:class:`gnomon.core.datasets.artifacts.DatasetMemo`)."""
        if self._datasets is None:
            from .datasets.artifacts import DatasetMemo

            self._datasets = DatasetMemo()
        return self._datasets

    @property
    def models(self):
        """Loaded registered models: an LRU of ``GNOMON_MODEL_MEMO`` entries."""
        if self._models is None:
            from . import settings
            from .memo import LRU

            self._models = LRU(settings.model_memo)
        return self._models

    # -- check -> run handoff ------------------------------------------------------------
    def keep_for_run(self, key: Hashable, dataset: Any) -> None:
        """Keep what a check loaded (under the dataset budget) for the task run that follows."""
        full = (CHECK, key)
        self.datasets.put(full, dataset)
        if full in self.datasets.entries:
            self._checks.add(full)

    def peek_for_run(self, key: Hashable) -> Any:
        """What a check kept under ``key`` (still kept), or None."""
        return self.datasets.get((CHECK, key))

    def take_for_run(self, key: Hashable) -> Any:
        """What a check kept under ``key``, handed over and forgotten; None if nothing (or evicted)."""
        full = (CHECK, key)
        self._checks.discard(full)
        return self.datasets.pop(full)

    def release_checks(self) -> None:
        """Forget everything checks kept (validation without a run)."""
        for full in list(self._checks):
            self.datasets.pop(full)
        self._checks.clear()

    def clear(self) -> None:
        """Forget everything."""
        if self._datasets is not None:
            self._datasets.clear()
        if self._models is not None:
            self._models.clear()
        self._checks.clear()
