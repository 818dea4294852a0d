"""The layer rules of docs/architecture.md, enforced on every import statement (function-level ones too).

    gnomon.cli  ──>  gnomon.core  <──  plugins (gnomon.plugins.builtin, contrib, third-party)

- core imports neither the CLI nor any plugin (it finds plugins only through hooks);
- plugins, the builtin one included, import core but never the CLI;
- the CLI imports core, never a plugin module directly.

The one exception is ``gnomon.core.testing``, the pytest plugin shipped for plugin authors: its
``gnomon_cli`` fixture drives the CLI in-process, so it sits above both layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"core": "gnomon.core", "cli": "gnomon.cli", "plugins/builtin": "gnomon.plugins.builtin"}

#: layer -> module prefixes it must never import
FORBIDDEN = {
    "gnomon.core": ("gnomon.cli", "gnomon.plugins"),
    "gnomon.plugins": ("gnomon.cli",),
    "gnomon.cli": ("gnomon.plugins",),
}
#: module -> prefixes it may import despite its layer's rule, with the reason
EXCEPTIONS = {"gnomon.core.testing": {"gnomon.cli": "pytest plugin: the gnomon_cli fixture runs the CLI"}}


def module_name(path: Path) -> str:
    """The dotted module name of a file under core/, cli/, plugins/builtin/ or a contrib plugin's src/."""
    rel = path.relative_to(REPO)
    folder = next((f for f in ROOTS if rel.as_posix().startswith(f + "/")), None)
    if folder is not None:
        package, parts = ROOTS[folder], rel.relative_to(folder).with_suffix("").parts
    else:  # plugins/contrib/<dist>/src/<module>/...
        package, parts = "gnomon.plugins.contrib", Path(*rel.parts[2:]).with_suffix("").parts
    parts = parts[:-1] if parts and parts[-1] == "__init__" else parts
    return ".".join([package, *parts])


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module ``source`` imports, as absolute names, with line numbers."""
    found = []
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def violations(path: Path, source: str | None = None) -> list[str]:
    """``file:line imports X`` for every import that breaks a layer rule."""
    module = module_name(path)
    layer = next((lay for lay in FORBIDDEN if module == lay or module.startswith(lay + ".")), None)
    if layer is None:
        return []
    allowed = EXCEPTIONS.get(module, {})
    out = []
    text = path.read_text() if source is None else source
    for line, target in imports_of(text, module, path.name == "__init__.py"):
        for prefix in FORBIDDEN[layer]:
            if (target == prefix or target.startswith(prefix + ".")) and prefix not in allowed:
                out.append(f"{path.relative_to(REPO)}:{line} imports {target} ({layer} must not import {prefix})")
    return sorted(set(out))


def _sources() -> list[Path]:
    files = [p for folder in ROOTS for p in (REPO / folder).rglob("*.py") if "templates" not in p.parts]
    files += [p for p in (REPO / "plugins" / "contrib").glob("*/src/**/*.py")]
    return files


def test_the_code_follows_the_layer_rules():
    found = [v for path in _sources() for v in violations(path)]
    assert not found, "layer rules broken (see docs/architecture.md):\n" + "\n".join(found)


@pytest.mark.parametrize(("file", "line"), [
    ("core/engine.py", "from gnomon.cli.main import handle_errors"),
    ("core/datasets/folder.py", "from ...cli import state"),
    ("core/workflows/runner.py", "import gnomon.plugins.builtin.attack_tasks"),
    ("plugins/builtin/commands.py", "from gnomon.cli.main import handle_errors"),
    ("plugins/contrib/gnomon-fgm/src/gnomon_fgm/task.py", "from gnomon.cli.output import error"),
    ("cli/commands/run_cmd.py", "from gnomon.plugins.builtin import triggers"),
])
def test_a_forbidden_import_is_caught(file, line):
    path = REPO / file
    assert violations(path, path.read_text() + f"\n\ndef later():\n    {line}\n"), line


def test_relative_imports_resolve():
    assert ("gnomon.core.models.build" in
            [t for _, t in imports_of("from .build import x", "gnomon.core.models", is_package=True)])
    assert "gnomon.core.errors" in [t for _, t in imports_of("from ..errors import E", "gnomon.core.models.refs", False)]


def absolute_self_imports(source: str) -> list[int]:
    """Lines where a builtin module imports the builtin package by its installed name."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and " " not in node.value:
            names = [node.value]  # importlib.import_module("gnomon.plugins.builtin.x")
        if any(n == "gnomon.plugins.builtin" or n.startswith("gnomon.plugins.builtin.") for n in names):
            lines.append(node.lineno)
    return lines


def test_builtin_modules_import_each_other_relatively():
    # a synced copy on a worker is gnomon_dir_plugins.builtin: an absolute self-import would load
    # the worker's installed copy beside it (tests/test_synced_builtin_isolation.py runs it for real)
    found = [f"{p.relative_to(REPO)}:{line}" for p in (REPO / "plugins" / "builtin").rglob("*.py")
             if "templates" not in p.parts for line in absolute_self_imports(p.read_text())]
    assert not found, "use relative imports inside plugins/builtin:\n" + "\n".join(found)
    assert absolute_self_imports("def f():\n    from gnomon.plugins.builtin.models import adapt_input\n") == [2]
