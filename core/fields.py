"""marshmallow fields shared by tasks: registry-backed choices, fractions, model references.

Tasks from any plugin should use these so that, for example, ``model_architecture``
accepts every architecture registered right now (including other plugins' models).
"""

from __future__ import annotations

import contextvars
import re
from typing import Any

from marshmallow import ValidationError, fields, validate

_current_registry: contextvars.ContextVar = contextvars.ContextVar("gnomon_registry", default=None)


def current_registry():
    """The registry validation is running against (set by the engine)."""
    return _current_registry.get()


def use_registry(registry):
    """Context manager-ish helper: returns a token; pass it to ``reset_registry``."""
    return _current_registry.set(registry)


def reset_registry(token) -> None:
    _current_registry.reset(token)


class RegistryName(fields.String):
    """A name that must be registered right now under ``kind`` (``model``, ``attack``...)."""

    def __init__(self, kind: str, *, sub_kind: str | None = None, **kwargs: Any):
        self.kind, self.sub_kind = kind, sub_kind
        super().__init__(**kwargs)

    def choices(self) -> list[str]:
        registry = current_registry()
        return [] if registry is None else registry.names(self.kind, sub_kind=self.sub_kind)

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        registry = current_registry()
        if registry is not None:
            names = self.choices()
            if value not in names:
                import difflib

                close = difflib.get_close_matches(value, names, n=1, cutoff=0.5)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ValidationError(f"must be one of the registered {self.kind}s: {', '.join(names)}.{hint}")
        return value


def Fraction(**kwargs: Any) -> fields.Float:
    """A float in [0, 1]."""
    return fields.Float(validate=validate.Range(0.0, 1.0), **kwargs)


def PositiveInt(**kwargs: Any) -> fields.Integer:
    """An integer >= 1."""
    return fields.Integer(strict=False, validate=validate.Range(min=1), **kwargs)


def NonNegativeInt(**kwargs: Any) -> fields.Integer:
    """An integer >= 0."""
    return fields.Integer(strict=False, validate=validate.Range(min=0), **kwargs)


def PositiveFloat(**kwargs: Any) -> fields.Float:
    """A float > 0."""
    return fields.Float(validate=validate.Range(min=0.0, min_inclusive=False), **kwargs)


_MODEL_REF = re.compile(r"^[^/]+(/(\d+|latest))?$")


class ModelRef(fields.String):
    """A registered MLflow model: ``name`` (latest version) or ``name/version``.

    Only the syntax is checked here; the task's ``check`` verifies it exists.
    """

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if value and not _MODEL_REF.match(value):
            raise ValidationError("expected a registered model as 'name' or 'name/version' (version a number)")
        return value


class Bool(fields.Boolean):
    """A boolean that also accepts the strings MLflow projects pass (true/false, yes/no, 1/0)."""

    truthy = {"true", "True", "TRUE", "1", "yes", "y", "on", 1}
    falsy = {"false", "False", "FALSE", "0", "no", "n", "off", "", 0}
