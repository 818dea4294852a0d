"""Helpers to build fake plugin modules and fake distributions for discovery tests."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

TASK_PLUGIN = '''
from marshmallow import fields
from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import TaskSchema
from gnomon.core.tasks import Task
{extra}

class EchoSchema(TaskSchema):
    value = fields.Integer(load_default=1, metadata={{"description": "a number"}})


def echo(ctx, value, seed):
    ctx.log_metric("value", value)
    return {{"value": value}}


@hookimpl
def register_tasks(register):
    register(Task(name="{task}", summary="echo a value", schema=EchoSchema, fn=echo))
'''


def write_module(directory: Path, name: str, source: str) -> Path:
    """Write ``name.py`` into ``directory`` and make sure a stale import is forgotten."""
    path = directory / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    sys.modules.pop(name, None)
    return path


class FakeEntryPoint:
    """Quacks like importlib.metadata.EntryPoint with a ``dist`` (name, version)."""

    def __init__(self, name: str, module: str, dist_name: str | None = None, version: str = "1.2.3"):
        self.name, self.value, self.group = name, module, "gnomon"
        self.dist = SimpleNamespace(name=dist_name or f"gnomon-{name}", version=version,
                                    locate_file=lambda p: Path("/fake/site-packages") / p)

    def load(self):
        import importlib

        return importlib.import_module(self.value)
