"""Parameter parsing (``-P name=value``), validation against a task's schema, and JSON Schema export."""

from __future__ import annotations

import difflib
from typing import Any, Iterable

from marshmallow import ValidationError, fields, validate

from .errors import GnomonError, MalformedParamError, ParamValidationError
from .fields import RegistryName, reset_registry, use_registry
from .tasks import Task


def parse_cli_params(pairs: Iterable[str]) -> dict[str, str]:
    """Turn ``["epochs=3", "optimizer=adam"]`` into a dict of strings.

    Raises :class:`MalformedParamError` (exit status 2) naming every item without ``=``, with an
    empty name, or naming a parameter twice.
    """
    out: dict[str, str] = {}
    errors: dict[str, list[str]] = {}
    for pair in pairs:
        if "=" not in pair:
            errors.setdefault(pair, []).append("expected name=value")
            continue
        name, value = pair.split("=", 1)
        name = name.strip()
        if not name:
            errors.setdefault(pair, []).append("parameter name is empty (expected name=value)")
        elif name in out:
            errors.setdefault(pair, []).append(f"'{name}' is given more than once")
        else:
            out[name] = value
    if errors:
        raise MalformedParamError(errors)
    return out


def validate_params(task: Task, raw: dict[str, Any], registry=None) -> dict[str, Any]:
    """Convert and validate ``raw`` with the task's schema; every error is reported at once.

    Strings (from the CLI) and Python values (from the API) are both accepted.
    Unknown parameters are errors, with the closest known name suggested.
    """
    schema = task.schema()
    token = use_registry(registry)
    try:
        return schema.load(dict(raw))
    except ValidationError as exc:
        errors = _flatten(exc.messages)
        known = list(schema.fields)
        for name, messages in list(errors.items()):
            if any("Unknown field" in m for m in messages):
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                errors[name] = ["unknown parameter" + (f"; did you mean '{close[0]}'?" if close else "")]
        raise ParamValidationError(task.name, errors) from None
    finally:
        reset_registry(token)


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(messages, dict):
        out: dict[str, list[str]] = {}
        for key, value in messages.items():
            key = "(params)" if key == "_schema" else key
            name = f"{prefix}.{key}" if prefix else str(key)
            for k, v in _flatten(value, name).items():
                out.setdefault(k, []).extend(v)
        return out
    if isinstance(messages, (list, tuple)):
        return {prefix: [str(m) for m in messages]}
    return {prefix: [str(messages)]}


def defaults(task: Task) -> dict[str, Any]:
    """Each parameter's default value (``None`` when it has none)."""
    out = {}
    for name, field in task.schema().fields.items():
        default = field.load_default
        out[name] = None if default is _missing() else (default() if callable(default) else default)
    return out


def _missing():
    from marshmallow.utils import missing

    return missing


_TYPES = {
    fields.Boolean: "boolean",
    fields.Integer: "integer",
    fields.Float: "number",
    fields.Number: "number",
    fields.String: "string",
    fields.List: "array",
    fields.Dict: "object",
}


def describe_param(name: str, field: fields.Field, registry=None) -> dict[str, Any]:
    """A JSON Schema property for one field (type, default, range, choices, description)."""
    prop: dict[str, Any] = {}
    for cls, json_type in _TYPES.items():
        if isinstance(field, cls):
            prop["type"] = json_type
            break
    else:
        prop["type"] = "string"
    if field.allow_none:
        prop["type"] = [prop["type"], "null"]
    description = field.metadata.get("description") or field.metadata.get("help")
    if description:
        prop["description"] = description
    default = field.load_default
    if default is not _missing():
        prop["default"] = default() if callable(default) else default
    validators = list(field.validators)
    for v in validators:
        if isinstance(v, validate.Range):
            if v.min is not None:
                prop["exclusiveMinimum" if not v.min_inclusive else "minimum"] = v.min
            if v.max is not None:
                prop["exclusiveMaximum" if not v.max_inclusive else "maximum"] = v.max
        elif isinstance(v, validate.OneOf):
            prop["enum"] = list(v.choices)
        elif isinstance(v, validate.Length):
            if v.min is not None:
                prop["minLength"] = v.min
            if v.max is not None:
                prop["maxLength"] = v.max
    if isinstance(field, RegistryName):
        token = use_registry(registry)
        try:
            prop["enum"] = field.choices()
        finally:
            reset_registry(token)
        prop["x-registry"] = field.kind
    return prop


def json_schema(task: Task, registry=None) -> dict[str, Any]:
    """The task's parameters as a JSON Schema (draft 2020-12) object."""
    schema = task.schema()
    props = {name: describe_param(name, f, registry) for name, f in schema.fields.items()}
    required = [n for n, f in schema.fields.items() if f.required]
    out: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": task.name,
        "description": task.summary,
        "type": "object",
        "properties": props,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    return out


__all__ = ["parse_cli_params", "validate_params", "defaults", "json_schema", "describe_param", "GnomonError"]
