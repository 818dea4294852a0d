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


#: Largest count/size TensorFlow takes (batch sizes, shapes and steps are int32 there).
INT32_MAX = 2**31 - 1
#: The range of a NumPy/TensorFlow int64: no integer parameter may lie outside it.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def PositiveInt(*, max: int = INT32_MAX, **kwargs: Any) -> fields.Integer:
    """An integer in [1, ``max``] (default: the int32 range TensorFlow accepts for sizes and counts)."""
    return fields.Integer(strict=False, validate=validate.Range(min=1, max=max), **kwargs)


def NonNegativeInt(*, max: int = INT32_MAX, **kwargs: Any) -> fields.Integer:
    """An integer in [0, ``max``] (default: the int32 range TensorFlow accepts for sizes and counts)."""
    return fields.Integer(strict=False, validate=validate.Range(min=0, max=max), **kwargs)


def check_int64(value: Any) -> None:
    """Raise ``ValidationError`` unless ``value`` fits a NumPy/TensorFlow int64 (``None`` passes)."""
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise ValidationError(f"{value} is out of range: integers must lie in [{INT64_MIN}, {INT64_MAX}] "
                              "(what NumPy and TensorFlow accept)")


def PositiveFloat(**kwargs: Any) -> fields.Float:
    """A float > 0."""
    return fields.Float(validate=validate.Range(min=0.0, min_inclusive=False), **kwargs)


_MODEL_REF = re.compile(r"^[^/]+(/(\d+|latest))?$")


class ModelRef(fields.String):
    """A registered MLflow model: ``name`` (latest version) or ``name/version``; never empty.

    Only the syntax is checked here; the task's ``check`` verifies it exists.
    """

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if not value.strip():
            raise ValidationError("must not be empty: expected a registered model as 'name' or 'name/version'")
        if not _MODEL_REF.match(value):
            raise ValidationError("expected a registered model as 'name' or 'name/version' (version a number)")
        return value


TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class FileName(fields.String):
    """A plain file or folder name (an artifact, or a folder inside one): non-empty, no path.

    Refused: empty, ``/`` or ``\\`` anywhere, ``.`` and ``..``, a leading ``.`` (hidden), control
    characters. ``tar=True`` also requires a ``.tar``, ``.tar.gz`` or ``.tgz`` suffix. ``None`` passes
    when the field allows it (meaning "the task's default").
    """

    def __init__(self, *, tar: bool = False, **kwargs: Any):
        self.tar = tar
        super().__init__(**kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        check_file_name(value, tar=self.tar)
        return value


def check_file_name(value: str, *, tar: bool = False) -> None:
    """Raise ``ValidationError`` unless ``value`` is a plain file/folder name (see :class:`FileName`)."""
    if not value or not value.strip():
        raise ValidationError("must not be empty: expected a file or folder name")
    if "/" in value or "\\" in value or value in (".", "..") or value.startswith("."):
        raise ValidationError(f"must be a plain file or folder name (no '/', '\\', '..', not hidden); got {value!r}")
    if any(ord(ch) < 32 for ch in value):
        raise ValidationError(f"must not contain control characters; got {value!r}")
    if tar and not value.endswith(TAR_SUFFIXES):
        raise ValidationError(f"must end with .tar, .tar.gz or .tgz; got {value!r}")


class Bool(fields.Boolean):
    """A boolean that also accepts the strings MLflow projects pass (true/false, yes/no, 1/0)."""

    truthy = {"true", "True", "TRUE", "1", "yes", "y", "on", 1}
    falsy = {"false", "False", "FALSE", "0", "no", "n", "off", "", 0}
