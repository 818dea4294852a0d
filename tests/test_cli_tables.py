"""Tables never split a name: at 80 columns (the width of a pipe), wider and narrower.

Every whitespace-separated word of every cell (task, parameter and plugin names, defaults,
choices, and the words of summaries) must appear whole on one output line.
"""

from __future__ import annotations

import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from gnomon.cli import state
from gnomon.cli.main import build_app
from gnomon.cli.output import table


@pytest.fixture
def cli(gnomon_home, monkeypatch):
    runner = CliRunner()

    def invoke(*args, columns=80):
        state.reset()
        monkeypatch.setenv("COLUMNS", str(columns))
        result = runner.invoke(build_app(), list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    yield invoke
    state.reset()


def assert_whole(words: set[str], output: str, width: int) -> None:
    lines = output.splitlines()
    assert all(len(line.rstrip()) <= width for line in lines), "a line is wider than the terminal"
    split = sorted(w for w in words if w and len(w) <= width - 4 and not any(w in line for line in lines))
    assert not split, f"split or missing at {width} columns: {split}\n{output}"


def words_of(*cells) -> set[str]:
    return {word for cell in cells for word in str(cell).split()}


@pytest.mark.parametrize("columns", [80, 60, 200])
def test_tasks_list_keeps_every_name_and_word_whole(cli, columns):
    tasks = json.loads(cli("tasks", "list", "--json"))
    output = cli("tasks", "list", columns=columns)
    assert_whole(words_of(*[v for t in tasks for v in (t["name"], t["category"], t["plugin"], t["summary"])]),
                 output, columns)
    for t in tasks:  # the name is one token on its line, not glued to another column
        assert any(t["name"] in line.replace("│", " ").split() for line in output.splitlines())


@pytest.mark.parametrize("columns", [80, 50])
def test_tasks_show_keeps_parameter_names_defaults_and_choices_whole(cli, columns):
    names = [t["name"] for t in json.loads(cli("tasks", "list", "--json"))]
    for name in names:
        schema = json.loads(cli("tasks", "show", name, "--json"))
        expected = set()
        for pname, prop in schema["properties"].items():
            expected |= words_of(pname, repr(prop.get("default")), prop.get("description", ""),
                                 *prop.get("enum", []))
        assert_whole(expected, cli("tasks", "show", name, columns=columns), columns)


@pytest.mark.parametrize("argv", [["plugins", "list"], ["models", "list"], ["workflow", "list"]])
def test_other_listings_keep_names_whole_at_80_columns(cli, argv):
    items = json.loads(cli(*argv, "--json"))
    cells = []
    for item in items:
        cells += [item.get("name", ""), item.get("plugin", ""), item.get("summary", ""), item.get("description", "")]
        for kind, provided in (item.get("provides") or {}).items():
            cells += [kind, *provided]
    assert_whole(words_of(*cells), cli(*argv), 80)


def _render(renderable, width: int) -> str:
    out = Console(width=width, record=True, force_terminal=False, color_system=None)
    with out.capture() as captured:
        out.print(renderable)
    return captured.get()


@pytest.mark.parametrize("width", [120, 80, 60, 36])
def test_the_layout_changes_instead_of_splitting(width):
    rows = [["gen_poison_clean_data", "attack", "Clean-label poisons (ART PoisoningAttackCleanLabelBackdoor)."],
            ["spatial_smoothing", "defense", "Median-filter each image, then evaluate."]]
    text = _render(table("tasks", ["task", "category", "summary"], rows, wrap=["summary"]), width)
    assert_whole(words_of(*[c for r in rows for c in r]), text, width)
    boxed = "┃" in text
    assert boxed == (width >= 80), text  # the widest layouts keep the box, narrow ones drop it


def test_an_identifier_column_never_truncates_even_when_nothing_fits():
    rows = [["a_really_long_parameter_name_that_goes_on", "x" * 30]]
    text = _render(table(None, ["parameter", "default"], rows), 50)
    assert_whole(words_of(*rows[0]), text, 50)
    assert "…" not in text
