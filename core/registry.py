"""What plugins register, and the registry that records who registered it.

The core owns naming rules: names are lower_snake_case and unique per kind. A
registration is attributed to the plugin whose hook implementation made it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import DuplicateNameError, GnomonError, UnknownNameError
from .tasks import Task

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ModelSpec:
    """A model architecture: ``build(input_shape, n_classes)`` returns an uncompiled Keras model.

    ``layers_doc`` optionally describes the layer indices attacks can name
    (e.g. ``feature_layer_index``); ``gnomon models show`` prints the real table.
    """

    name: str
    summary: str
    build: Callable[..., Any]
    default_input_shape: tuple[int, int, int] = (28, 28, 1)
    plugin: str = ""


@dataclass(frozen=True)
class AttackSpec:
    """An attack component (``kind="trigger"`` for backdoor triggers) made by ``factory(**options)``."""

    name: str
    summary: str
    factory: Callable[..., Any]
    kind: str = "trigger"
    plugin: str = ""


@dataclass(frozen=True)
class DefenseSpec:
    """A defense component (``kind="preprocessor"``) made by ``factory(**options)``."""

    name: str
    summary: str
    factory: Callable[..., Any]
    kind: str = "preprocessor"
    plugin: str = ""


@dataclass(frozen=True)
class WorkflowSpec:
    """A named workflow file."""

    name: str
    path: str
    plugin: str = ""


KINDS = ("task", "model", "attack", "defense", "workflow")


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    tasks: dict[str, Task] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    attacks: dict[str, AttackSpec] = field(default_factory=dict)
    defenses: dict[str, DefenseSpec] = field(default_factory=dict)
    workflows: dict[str, WorkflowSpec] = field(default_factory=dict)

    def table(self, kind: str) -> dict[str, Any]:
        return {
            "task": self.tasks,
            "model": self.models,
            "attack": self.attacks,
            "defense": self.defenses,
            "workflow": self.workflows,
        }[kind]

    def add(self, kind: str, item: Any, plugin: str) -> None:
        """Add ``item`` under its name, enforcing naming rules and uniqueness."""
        name = item.name
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise GnomonError(
                f"plugin '{plugin}' registered {kind} {name!r}: names must be lower_snake_case "
                "(letters, digits and underscores, starting with a letter)"
            )
        table = self.table(kind)
        if name in table:
            raise DuplicateNameError(kind, name, table[name].plugin, plugin)
        table[name] = _with_plugin(item, plugin)

    def get(self, kind: str, name: str) -> Any:
        table = self.table(kind)
        try:
            return table[name]
        except KeyError:
            raise UnknownNameError(kind, name, list(table)) from None

    def names(self, kind: str, *, sub_kind: str | None = None) -> list[str]:
        table = self.table(kind)
        return sorted(n for n, v in table.items() if sub_kind is None or getattr(v, "kind", None) == sub_kind)

    def provided_by(self, plugin: str) -> dict[str, list[str]]:
        """Names each kind has from ``plugin``."""
        out: dict[str, list[str]] = {}
        for kind in KINDS:
            names = sorted(n for n, v in self.table(kind).items() if v.plugin == plugin)
            if names:
                out[kind + "s"] = names
        return out


def _with_plugin(item: Any, plugin: str) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(item) and not getattr(item, "plugin", ""):
        return dataclasses.replace(item, plugin=plugin)
    return item
