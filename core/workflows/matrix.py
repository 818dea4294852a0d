"""Matrix steps: one declared step expanded into one concrete step per combination of named axes.

A step declares ``matrix`` (named axes, each a list of values, plus optional ``include`` and
``exclude`` lists) and may use ``${matrix.AXIS}`` in its task, params and report labels.
``[[steps.NAME.when]]`` tables add params or report labels to the expansions they ``match``
(per-value settings without repeating the step). Expansions are named
``NAME[axis=value,...]`` with the axes in declaration order.

A reference to a matrix step picks one expansion: axes written in brackets
(``${steps.defend[defense=jpeg_compression,data=clean].run_id}``) are taken as written, every
other axis of the referenced step is paired with the referring step's axis of the same name.
So a later matrix step over the same axis names is paired with an earlier one axis by axis.

The same axes / include / exclude rules serve sweeps (:mod:`.sweep`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from .refs import Keep, Ref, RefSyntaxError, find_refs, substitute, value_text

SCALARS = (str, int, float, bool)
AXIS_RE_TEXT = r"^[A-Za-z_][A-Za-z0-9_]*$"


@dataclass(frozen=True)
class Matrix:
    """Named axes (declaration order), extra combinations and excluded (partial) combinations."""

    axes: dict[str, tuple[Any, ...]]
    include: tuple[dict[str, Any], ...] = ()
    exclude: tuple[dict[str, Any], ...] = ()

    @property
    def names(self) -> list[str]:
        return list(self.axes)

    def combinations(self) -> list[dict[str, Any]]:
        """The cartesian product in declaration order (first axis outermost), minus ``exclude``, plus ``include``."""
        product = [dict(zip(self.axes, values, strict=True)) for values in itertools.product(*self.axes.values())]
        kept = [c for c in product if not any(matches(rule, c) for rule in self.exclude)]
        for extra in self.include:
            if not any(same(extra, c) for c in kept):
                kept.append(dict(extra))
        return kept


def matches(rule: dict[str, Any], combination: dict[str, Any]) -> bool:
    """True if every axis named in ``rule`` has the rule's value in ``combination`` (compared as text)."""
    return all(axis in combination and value_text(combination[axis]) == value_text(value)
               for axis, value in rule.items())


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and matches(a, b)


def expansion_name(base: str, combination: dict[str, Any]) -> str:
    """``defend[defense=jpeg_compression,data=clean]`` (no brackets for an empty combination)."""
    if not combination:
        return base
    return f"{base}[{','.join(f'{a}={value_text(v)}' for a, v in combination.items())}]"


def parse_matrix(raw: Any, where: str, *, kind: str = "matrix") -> tuple[Matrix | None, list[str]]:
    """Parse a ``matrix`` (or ``[sweep]``) table; every problem is returned, naming ``where``."""
    import re

    problems: list[str] = []
    if not isinstance(raw, dict) or not raw:
        return None, [f"{where}: {kind} must be a table of axis = [values], e.g. {{ defense = [\"a\", \"b\"] }}"]
    axes: dict[str, tuple[Any, ...]] = {}
    for axis, values in raw.items():
        if axis in ("include", "exclude"):
            continue
        if not re.match(AXIS_RE_TEXT, axis):
            problems.append(f"{where}: axis name '{axis}' must use letters, digits and underscores")
            continue
        if not isinstance(values, list):
            problems.append(f"{where}.{axis}: must be a list of values, got {type(values).__name__}")
            continue
        if not values:
            problems.append(f"{where}.{axis}: empty axis; give at least one value")
            continue
        bad = [v for v in values if not isinstance(v, SCALARS)]
        if bad:
            problems.append(f"{where}.{axis}: values must be strings, numbers or booleans")
            continue
        texts = [value_text(v) for v in values]
        dupes = sorted({t for t in texts if texts.count(t) > 1})
        if dupes:
            problems.append(f"{where}.{axis}: value(s) {', '.join(dupes)} given twice")
            continue
        axes[axis] = tuple(values)
    if not axes and not problems:
        problems.append(f"{where}: {kind} has no axes")
    rules = {}
    for name in ("include", "exclude"):
        items = raw.get(name, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) and i for i in items):
            problems.append(f"{where}.{name}: must be a list of tables such as [{{ axis = value }}]")
            items = []
        rules[name] = items
    if problems:
        return None, problems
    for i, rule in enumerate(rules["exclude"]):
        for axis, value in rule.items():
            if axis not in axes:
                problems.append(f"{where}.exclude[{i}]: unknown axis '{axis}' (axes: {', '.join(axes)})")
            elif not any(value_text(v) == value_text(value) for v in axes[axis]):
                problems.append(f"{where}.exclude[{i}]: {axis} = {value_text(value)} is not one of the axis values")
    for i, rule in enumerate(rules["include"]):
        missing = [a for a in axes if a not in rule]
        unknown = [a for a in rule if a not in axes]
        if missing or unknown:
            problems.append(f"{where}.include[{i}]: an included combination gives every axis "
                            f"({', '.join(axes)})" + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        elif not all(isinstance(v, SCALARS) for v in rule.values()):
            problems.append(f"{where}.include[{i}]: values must be strings, numbers or booleans")
    if problems:
        return None, problems
    matrix = Matrix(axes=axes, include=tuple(rules["include"]), exclude=tuple(rules["exclude"]))
    product = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    for i, rule in enumerate(matrix.exclude):
        hit = [c for c in product if matches(rule, c)]
        if not hit:
            problems.append(f"{where}.exclude[{i}]: excludes no combination")
        for j in range(i):
            twice = [c for c in hit if matches(matrix.exclude[j], c)]
            if twice:
                problems.append(f"{where}.exclude[{i}]: excludes {expansion_name('', twice[0])} again "
                                f"(already excluded by exclude[{j}]); a combination is excluded once")
    if not problems and not matrix.combinations():
        problems.append(f"{where}: every combination is excluded")
    return (None if problems else matrix), problems


@dataclass(frozen=True)
class When:
    """Params / report labels added to the expansions whose axis values ``match``."""

    match: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    report: dict[str, str] = field(default_factory=dict)


def parse_when(raw: Any, where: str, matrix: Matrix | None, plain) -> tuple[tuple[When, ...], list[str]]:
    """Parse ``[[steps.NAME.when]]`` entries."""
    if raw is None:
        return (), []
    problems: list[str] = []
    if matrix is None:
        return (), [f"{where}.when: only a matrix step can have 'when' entries"]
    if not isinstance(raw, list):
        return (), [f"{where}.when: write [[{where[1:-1]}.when]] tables with 'match' and 'params' or 'report'"]
    out = []
    for i, item in enumerate(raw):
        at = f"{where}.when[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{at}: must be a table with 'match' and 'params' or 'report'")
            continue
        extra = sorted(set(item) - {"match", "params", "report"})
        if extra:
            problems.append(f"{at}: unknown key(s) {', '.join(extra)}; expected match, params, report")
        match = item.get("match")
        if not isinstance(match, dict) or not match:
            problems.append(f"{at}.match: a table of axis = value, e.g. {{ defense = \"jpeg_compression\" }}")
            continue
        for axis in match:
            if axis not in matrix.axes:
                problems.append(f"{at}.match: unknown axis '{axis}' (axes: {', '.join(matrix.axes)})")
        if not any(matches(match, c) for c in matrix.combinations()):
            problems.append(f"{at}.match: matches no expansion of the step")
        params = item.get("params", {})
        if not isinstance(params, dict):
            problems.append(f"{at}.params: must be a table of name = value")
            params = {}
        for key, value in params.items():
            if not plain(value):
                problems.append(f"{at}.params.{key}: must be a string, number, boolean or a list of them")
        report = item.get("report", {})
        if not isinstance(report, dict) or not all(isinstance(v, str) for v in report.values()):
            problems.append(f"{at}.report: must be a table of strings")
            report = {}
        out.append(When(match=dict(match), params=dict(params), report=dict(report)))
    return tuple(out), problems


def substitute_matrix(value: Any, combination: dict[str, Any], problems: list[str], where: str) -> Any:
    """Replace ``${matrix.AXIS}`` in ``value``; other references are kept as written."""

    def lookup(ref: Ref):
        if ref.kind != "matrix":
            return Keep(ref.text)
        if ref.target not in combination:
            known = ", ".join(combination) or "none: the step has no matrix"
            problems.append(f"{where}: {ref.text} names an unknown matrix axis (axes: {known})")
            return Keep(ref.text)
        return combination[ref.target]

    try:
        return substitute(value, lookup)
    except RefSyntaxError:
        return value  # reported by validation, naming the step and the param


def pair_refs(value: Any, combination: dict[str, Any], expansions: dict[str, list[dict[str, Any]]],
              problems: list[str], where: str) -> Any:
    """Point step references at concrete expansions (explicit selector, then pairing by axis name).

    ``expansions`` maps each declared matrix step to its combinations. References to
    unknown steps are left as written for validation to report.
    """

    def lookup(ref: Ref):
        if ref.kind not in ("run_id", "output") or ref.target not in expansions:
            if ref.selector and ref.kind in ("run_id", "output"):
                problems.append(f"{where}: {ref.text} selects an expansion of step '{ref.target}', which "
                                "is not a matrix step")
            return Keep(ref.text)
        combos = expansions[ref.target]
        axes = list(combos[0]) if combos else []
        wanted: dict[str, str] = {}
        for axis, text in ref.selector:
            if axis not in axes:
                problems.append(f"{where}: {ref.text}: step '{ref.target}' has no axis '{axis}' "
                                f"(axes: {', '.join(axes)})")
                return Keep(ref.text)
            wanted[axis] = text
        for axis in axes:
            if axis in wanted:
                continue
            if axis not in combination:
                problems.append(f"{where}: {ref.text} is ambiguous: step '{ref.target}' has an axis '{axis}' "
                                "that this step does not have; pick one, e.g. "
                                f"${{steps.{ref.target}[{axis}={value_text(combos[0][axis])}]...}}")
                return Keep(ref.text)
            wanted[axis] = value_text(combination[axis])
        found = [c for c in combos if all(value_text(c[a]) == t for a, t in wanted.items())]
        if not found:
            problems.append(f"{where}: {ref.text}: step '{ref.target}' has no expansion "
                            f"{expansion_name(ref.target, wanted)}")
            return Keep(ref.text)
        return Keep(ref.with_step(expansion_name(ref.target, found[0])))

    try:
        return substitute(value, lookup)
    except RefSyntaxError:
        return value  # reported by validation, naming the param


def has_refs(value: Any) -> bool:
    try:
        return bool(find_refs(value))
    except RefSyntaxError:
        return True
