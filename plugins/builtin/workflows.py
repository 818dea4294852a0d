"""Builtin part: the three backdoor-poisoning demo workflows and the trigger grid (``gnomon workflow list``).

Each ``workflow_files/<name>.toml`` is registered under its file name:
``baseline``, ``adversarial_embedding`` and ``clean_label``, mirroring the seed's three
demo notebooks, and ``trigger_grid`` (every builtin trigger against every preprocessing defense).
"""

from __future__ import annotations

from pathlib import Path

from gnomon.core.hookspecs import hookimpl

WORKFLOW_DIR = Path(__file__).resolve().parent / "workflow_files"

#: The shipped workflows, in the order the seed presents its demos.
DEMOS = ("baseline", "adversarial_embedding", "clean_label", "backdoor_defenses")

#: Every shipped workflow: the demos, then the trigger x defense grid.
WORKFLOWS = (*DEMOS, "trigger_grid")


def workflow_path(name: str) -> Path:
    """The TOML file of the builtin workflow ``name``."""
    return WORKFLOW_DIR / f"{name}.toml"


@hookimpl
def register_workflows(register):
    """Register the shipped workflow files."""
    for name in WORKFLOWS:
        path = workflow_path(name)
        if path.is_file():
            register(name, str(path))
