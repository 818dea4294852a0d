"""References inside step parameters: ``${vars.NAME}``, ``${steps.NAME.run_id}``, ``${steps.NAME.outputs.KEY}``.

A value that is exactly one reference is replaced by the referenced value itself (keeping
its type); references embedded in a longer string are interpolated as text, so
``"${steps.t.outputs.model_name}/${steps.t.outputs.model_version}"`` becomes ``"name/3"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

REF_RE = re.compile(r"\$\{([^}]*)\}")


@dataclass(frozen=True)
class Ref:
    """One parsed reference. ``kind`` is ``"var"``, ``"run_id"`` or ``"output"``."""

    text: str          # the full "${...}"
    kind: str
    target: str        # variable name or step name
    key: str = ""      # output key (kind "output")

    def describe(self) -> str:
        return self.text


class RefSyntaxError(ValueError):
    """A ``${...}`` that is not one of the supported reference forms."""


def parse_ref(inner: str) -> Ref:
    """Parse the text between ``${`` and ``}``."""
    text = "${" + inner + "}"
    parts = inner.strip().split(".")
    if len(parts) == 2 and parts[0] == "vars" and parts[1]:
        return Ref(text, "var", parts[1])
    if len(parts) == 3 and parts[0] == "steps" and parts[1] and parts[2] == "run_id":
        return Ref(text, "run_id", parts[1])
    if len(parts) == 4 and parts[0] == "steps" and parts[1] and parts[2] == "outputs" and parts[3]:
        return Ref(text, "output", parts[1], parts[3])
    raise RefSyntaxError(f"'{text}' is not a reference; use ${{vars.NAME}}, ${{steps.STEP.run_id}} "
                         "or ${steps.STEP.outputs.KEY}")


def find_refs(value: Any) -> list[Ref]:
    """Every reference in a parameter value (strings, or lists of them)."""
    if isinstance(value, list):
        return [r for item in value for r in find_refs(item)]
    if not isinstance(value, str):
        return []
    return [parse_ref(m.group(1)) for m in REF_RE.finditer(value)]


def substitute(value: Any, lookup: Callable[[Ref], Any]) -> Any:
    """Replace references in ``value`` using ``lookup(ref)``.

    A string that is one whole reference becomes the looked-up value (any type);
    otherwise references are interpolated with ``str()``.
    """
    if isinstance(value, list):
        return [substitute(item, lookup) for item in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = REF_RE.fullmatch(value)
    if whole:
        return lookup(parse_ref(whole.group(1)))
    return REF_RE.sub(lambda m: _text(lookup(parse_ref(m.group(1)))), value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def step_dependencies(params: dict[str, Any]) -> list[str]:
    """Names of the steps whose run id or outputs these parameters use, in first-use order."""
    seen: list[str] = []
    for value in params.values():
        for ref in find_refs(value):
            if ref.kind != "var" and ref.target not in seen:
                seen.append(ref.target)
    return seen
