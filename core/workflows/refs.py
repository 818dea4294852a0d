"""References inside step parameters.

``${vars.NAME}`` (a workflow variable), ``${matrix.AXIS}`` (this expansion's value of a matrix
axis), ``${steps.NAME.run_id}`` and ``${steps.NAME.outputs.KEY}`` (an earlier step's run id or
output). A reference to a matrix step may pick one expansion by its axis values,
``${steps.defend[defense=jpeg_compression,data=clean].run_id}``; axes it leaves out are
paired with the referring step's own axes of the same name (see :mod:`.matrix`).

A value that is exactly one reference is replaced by the referenced value itself (keeping
its type); references embedded in a longer string are interpolated as text, so
``"${steps.t.outputs.model_name}/${steps.t.outputs.model_version}"`` becomes ``"name/3"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

REF_RE = re.compile(r"\$\{([^}]*)\}")
_STEP_RE = re.compile(r"^steps\.([A-Za-z_][A-Za-z0-9_]*)(?:\[([^\]]*)\])?\.(run_id|outputs\.(.+))$")


@dataclass(frozen=True)
class Ref:
    """One parsed reference. ``kind`` is ``"var"``, ``"matrix"``, ``"run_id"`` or ``"output"``.

    ``target`` is the variable, axis or (base) step name; ``selector`` the ``(axis, value)``
    pairs written between brackets after a step name, in the order written.
    """

    text: str          # the full "${...}"
    kind: str
    target: str
    key: str = ""      # output key (kind "output")
    selector: tuple[tuple[str, str], ...] = ()

    @property
    def step(self) -> str:
        """The referenced step's name as written: ``base`` or ``base[axis=value,...]``."""
        if not self.selector:
            return self.target
        return f"{self.target}[{','.join(f'{a}={v}' for a, v in self.selector)}]"

    def describe(self) -> str:
        return self.text

    def with_step(self, name: str) -> str:
        """This reference's text, pointing at the concrete step ``name`` instead."""
        tail = "run_id" if self.kind == "run_id" else f"outputs.{self.key}"
        return "${steps." + name + "." + tail + "}"


class RefSyntaxError(ValueError):
    """A ``${...}`` that is not one of the supported reference forms."""


def parse_ref(inner: str) -> Ref:
    """Parse the text between ``${`` and ``}``."""
    text = "${" + inner + "}"
    body = inner.strip()
    parts = body.split(".")
    if len(parts) == 2 and parts[0] == "vars" and parts[1]:
        return Ref(text, "var", parts[1])
    if len(parts) == 2 and parts[0] == "matrix" and parts[1]:
        return Ref(text, "matrix", parts[1])
    match = _STEP_RE.match(body)
    if match:
        name, selector_text, tail, key = match.groups()
        selector = parse_selector(selector_text, text) if selector_text is not None else ()
        if tail == "run_id":
            return Ref(text, "run_id", name, selector=selector)
        if key and "." not in key:
            return Ref(text, "output", name, key, selector=selector)
    raise RefSyntaxError(f"'{text}' is not a reference; use ${{vars.NAME}}, ${{matrix.AXIS}}, "
                         "${steps.STEP.run_id} or ${steps.STEP.outputs.KEY} "
                         "(STEP may pick one expansion of a matrix step: STEP[axis=value,...])")


def parse_selector(text: str, where: str = "") -> tuple[tuple[str, str], ...]:
    """``"a=1,b=x"`` -> ``(("a", "1"), ("b", "x"))``; raises :class:`RefSyntaxError`."""
    pairs: list[tuple[str, str]] = []
    for item in text.split(","):
        axis, sep, value = item.partition("=")
        axis, value = axis.strip(), value.strip()
        if not sep or not axis or not value:
            raise RefSyntaxError(f"'{where or text}': a step selector is [axis=value,...], got '[{text}]'")
        if any(axis == a for a, _ in pairs):
            raise RefSyntaxError(f"'{where or text}': axis '{axis}' is given twice")
        pairs.append((axis, value))
    return tuple(pairs)


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
    otherwise references are interpolated with ``str()``. ``lookup`` may return a
    :class:`Keep` to leave a reference as it is.
    """
    if isinstance(value, list):
        return [substitute(item, lookup) for item in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = REF_RE.fullmatch(value)
    if whole:
        found = lookup(parse_ref(whole.group(1)))
        return found.text if isinstance(found, Keep) else found
    return REF_RE.sub(lambda m: _text(lookup(parse_ref(m.group(1)))), value)


@dataclass(frozen=True)
class Keep:
    """Returned by a ``substitute`` lookup: put this text in place of the reference."""

    text: str


def _text(value: Any) -> str:
    if isinstance(value, Keep):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def value_text(value: Any) -> str:
    """How a scalar is written in step names, selectors and interpolated strings."""
    return _text(value)


def step_dependencies(params: dict[str, Any]) -> list[str]:
    """Names of the steps whose run id or outputs these parameters use, in first-use order."""
    seen: list[str] = []
    for value in params.values():
        for ref in find_refs(value):
            if ref.kind in ("run_id", "output") and ref.step not in seen:
                seen.append(ref.step)
    return seen
