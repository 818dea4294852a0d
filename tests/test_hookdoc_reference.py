"""The hook reference: generated from the hookspecs, complete, and committed up to date."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from typer.testing import CliRunner

from gnomon.cli import state
from gnomon.cli.main import build_app
from gnomon.core import hookdoc, hookspecs

DOC = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"


def _spec_names() -> set[str]:
    """Hook names read straight from the hookspecs module, independently of hookdoc."""
    return {name for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, "gnomon_spec")}


def test_every_hookspec_is_documented_with_its_docstring():
    names = _spec_names()
    assert names, "no hookspecs found"
    text = hookdoc.render_markdown()
    headings = set(re.findall(r"^## (\w+)$", text, flags=re.M))
    assert names <= headings
    for name in names:
        summary = inspect.getdoc(getattr(hookspecs, name)).splitlines()[0]
        assert summary.replace("``", "`") in text, name
        assert f"def {name}(" in text


def test_docs_hooks_md_is_up_to_date():
    assert DOC.exists(), "docs/hooks.md is missing"
    assert DOC.read_text(encoding="utf-8") == hookdoc.render_markdown(), (
        "docs/hooks.md is stale: regenerate it with `python -m gnomon.core.hookdoc docs/hooks.md`")
    assert set(re.findall(r"^## (\w+)$", DOC.read_text(), flags=re.M)) >= _spec_names()


def test_literal_blocks_become_fenced_code():
    md = hookdoc._rst_to_markdown("Example::\n\n    @hookimpl\n    def f():\n        pass\n\nAfter.")
    assert md.splitlines() == ["Example:", "", "```python", "@hookimpl", "def f():", "    pass", "```", "",
                               "After."]
    assert hookdoc._inline("see :class:`~gnomon.core.tasks.Task` and ``x``") == "see `gnomon.core.tasks.Task` and `x`"


def test_new_hookspec_appears_in_the_reference(monkeypatch):
    @hookspecs.hookspec
    def register_widgets(register):
        """Register widgets (a made-up hook).

        Call ``register(widget)``.
        """

    monkeypatch.setattr(hookspecs, "register_widgets", register_widgets, raising=False)
    monkeypatch.setattr(inspect, "getsourcelines", lambda obj: ([], 10_000 if obj is register_widgets else 0))
    docs = hookdoc.hook_docs()
    assert docs[-1].name == "register_widgets"
    assert "Call `register(widget)`." in hookdoc.render_markdown()


def test_cli_prints_the_reference(gnomon_home):
    state.reset()
    try:
        result = CliRunner().invoke(build_app(), ["plugins", "hooks"], catch_exceptions=False)
        assert result.exit_code == 0
        for name in _spec_names():
            assert name + "(" in result.stdout
        md = CliRunner().invoke(build_app(), ["plugins", "hooks", "--markdown"], catch_exceptions=False)
        assert md.stdout == hookdoc.render_markdown()
    finally:
        state.reset()


def test_write_reports_changes(tmp_path):
    target = tmp_path / "hooks.md"
    assert hookdoc.write(target) is True
    assert hookdoc.write(target) is False
    assert hookdoc.main([str(target)]) == 0
