"""Finding a workflow by file path or by the name a plugin registered it under."""

from __future__ import annotations

from pathlib import Path

from ..errors import UnknownNameError
from .spec import Workflow, load_workflow


def find_workflow(engine, name_or_path: str) -> Workflow:
    """Load ``name_or_path``: an existing file, else a registered workflow name (``gnomon workflow list``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return load_workflow(path)
    registered = engine.registry.workflows
    if name_or_path in registered:
        return load_workflow(registered[name_or_path].path)
    if path.suffix == ".toml" or "/" in name_or_path:
        from .spec import WorkflowFileError

        raise WorkflowFileError(name_or_path, ["no such file (and not a registered workflow name)"])
    raise UnknownNameError("workflow", name_or_path, list(registered))


def registered_workflows(engine) -> list[tuple[str, str, Workflow | Exception]]:
    """``(name, plugin, workflow or the error loading it)`` for every registered workflow."""
    out = []
    for name in sorted(engine.registry.workflows):
        spec = engine.registry.workflows[name]
        try:
            out.append((name, spec.plugin, load_workflow(spec.path)))
        except Exception as exc:  # a broken file is listed, not fatal
            out.append((name, spec.plugin, exc))
    return out
