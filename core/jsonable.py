"""The one conversion of Python/NumPy values to what ``json.dumps`` accepts."""

from __future__ import annotations

from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: dict keys as strings, tuples/sets as lists, NumPy arrays and
    scalars as Python lists and numbers, anything else unknown as ``str(value)``.

    Does not import NumPy (the CLI's start-up path uses this): NumPy values are recognised by
    their type's module.
    """
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
