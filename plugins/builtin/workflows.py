"""Builtin part: the three backdoor-poisoning demo workflows (``gnomon workflow list``).

Each ``workflow_files/<name>.toml`` is registered under its file name:
``baseline``, ``adversarial_embedding`` and ``clean_label``, mirroring the seed's three
demo notebooks.
"""

from __future__ import annotations

from pathlib import Path

WORKFLOW_DIR = Path(__file__).resolve().parent / "workflow_files"

#: The shipped workflows, in the order the seed presents its demos.
DEMOS = ("baseline", "adversarial_embedding", "clean_label", "backdoor_defenses")


def workflow_path(name: str) -> Path:
    """The TOML file of the builtin workflow ``name``."""
    return WORKFLOW_DIR / f"{name}.toml"


def register_workflows(register):
    """Register the demo workflow files."""
    for name in DEMOS:
        path = workflow_path(name)
        if path.is_file():
            register(name, str(path))
