"""Maps the repository's folders onto one import root, ``gnomon``.

``core/`` -> ``gnomon.core``, ``cli/`` -> ``gnomon.cli``, ``plugins/builtin/`` ->
``gnomon.plugins.builtin``. Sub-packages are found automatically. Metadata lives in
pyproject.toml.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"gnomon.core": "core", "gnomon.cli": "cli", "gnomon.plugins.builtin": "plugins/builtin"}


def find_packages():
    here = Path(__file__).parent
    packages = []
    for name, folder in ROOTS.items():
        base = here / folder
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            if any(part.startswith((".", "_")) or part == "templates" for part in rel.parts):
                continue
            packages.append(".".join([name, *rel.parts]) if rel.parts else name)
    return packages


setup(packages=find_packages(), package_dir=ROOTS)
