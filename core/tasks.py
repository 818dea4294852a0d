"""The :class:`Task` type: a named, schema-validated unit of work that runs as an MLflow run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .context import CheckContext

#: Task categories, used to group ``gnomon tasks list``.
CATEGORIES = ("data", "model", "attack", "defense", "evaluation", "utility")


@dataclass(frozen=True)
class Task:
    """A runnable task.

    Attributes:
        name: unique lower_snake_case name, as typed on the command line.
        summary: one line shown by ``gnomon tasks list``.
        schema: a ``marshmallow.Schema`` subclass; one field per parameter, each
            with a default (``load_default``) and ``metadata={"description": ...}``.
        fn: ``fn(ctx, **params)`` with a :class:`~gnomon.core.context.RunContext`; may
            return a dict of outputs (e.g. the registered model name) that workflows can
            refer to.
        category: one of :data:`CATEGORIES`.
        check: optional ``check(ctx, params) -> dict[field, message]`` with a
            :class:`~gnomon.core.context.CheckContext`, run after schema validation and
            before any MLflow run is created, for checks that need the tracking store
            (does the model exist? the dataset artifact?). It runs once per run.
        description: longer help for ``gnomon tasks show``.
        plugin: filled in by the registry.
    """

    name: str
    summary: str
    schema: type
    fn: Callable[..., Any]  # fn(ctx: RunContext, **params)
    category: str = "utility"
    check: Callable[[CheckContext, dict[str, Any]], dict[str, Any] | None] | None = None
    description: str = ""
    plugin: str = ""
    tags: dict[str, str] = field(default_factory=dict)
