"""One settings module reads every GNOMON_* variable, with one truthy rule, documented in one table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gnomon.core import settings

REPO = Path(__file__).resolve().parents[1]
# contrib plugins are separate distributions: their variables are their own
SOURCES = [p for folder in ("core", "cli", "plugins/builtin") for p in (REPO / folder).rglob("*.py")
           if ".venv" not in p.parts and "templates" not in p.parts and "tests" not in p.parts]
# module attributes plugins declare, not environment variables
NOT_SETTINGS = {"GNOMON_HOOK_API", "GNOMON_PLUGINS"}


@pytest.mark.parametrize("value", ["1", "true", "TRUE", " yes ", "On"])
def test_truthy_values(value):
    assert settings.truthy(value)
    assert settings.flag("GNOMON_DEBUG", {"GNOMON_DEBUG": value})


@pytest.mark.parametrize("value", [None, "", "0", "false", "no", "off", "2", "y"])
def test_everything_else_is_false(value):
    environ = {} if value is None else {"GNOMON_DEBUG": value}
    assert not settings.flag("GNOMON_DEBUG", environ)


def test_every_switch_uses_the_one_rule(monkeypatch):
    from gnomon.core.engine import debug_enabled
    from gnomon.core.plugins import load_plugins

    monkeypatch.setenv("GNOMON_DEBUG", "on")
    assert debug_enabled()
    monkeypatch.setenv("GNOMON_DEBUG", "0")  # was "set, so true" in the CLI before
    assert not debug_enabled()
    plugins = load_plugins(environ={"GNOMON_STRICT_PLUGINS": "on"}, builtins=False, entry_points=[])
    assert plugins.strict
    plugins = load_plugins(environ={"GNOMON_STRICT_PLUGINS": "no"}, builtins=False, entry_points=[])
    assert not plugins.strict


def test_numbers_fall_back_on_bad_values():
    assert settings.model_memo({"GNOMON_MODEL_MEMO": "x"}) == 4
    assert settings.model_memo({"GNOMON_MODEL_MEMO": "-3"}) == 0
    assert settings.dataset_memo_bytes({"GNOMON_DATASET_MEMO_MB": "2"}) == 2 * 2**20
    assert settings.names("GNOMON_LOAD_PLUGINS", {}) is None
    assert settings.names("GNOMON_LOAD_PLUGINS", {"GNOMON_LOAD_PLUGINS": ""}) == []
    assert settings.names("GNOMON_LOAD_PLUGINS", {"GNOMON_LOAD_PLUGINS": " a, ,b"}) == ["a", "b"]


def test_unknown_names_are_refused():
    with pytest.raises(KeyError, match="GNOMON_NOPE"):
        settings.text("GNOMON_NOPE")


def test_no_other_module_reads_a_gnomon_variable():
    pattern = re.compile(r"""(environ(\.get)?\s*[\(\[]\s*|getenv\(\s*)["']GNOMON_""")
    offenders = [f"{p.relative_to(REPO)}:{n}" for p in SOURCES if p.name != "settings.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, f"read GNOMON_* through gnomon.core.settings: {offenders}"


def test_every_variable_the_code_names_is_a_setting():
    named = {m for p in SOURCES for m in re.findall(r"\bGNOMON_[A-Z][A-Z_]*[A-Z]\b", p.read_text())}
    unknown = sorted(named - set(settings.SETTINGS) - NOT_SETTINGS)
    assert not unknown, f"add these to gnomon.core.settings.SETTINGS: {unknown}"


def test_readme_table_is_the_settings_table():
    assert settings.markdown_table() in (REPO / "README.md").read_text()
