"""Every hook, implemented by a third-party-style plugin, and the meta-test that each hook is documented and tested."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from typer.testing import CliRunner

from gnomon.core import hookspecs
from gnomon.core.plugins import load_plugins
from tests.plugin_fakes import FakeEntryPoint, write_module

EVERY_HOOK_PLUGIN = """
from gnomon.core.hookspecs import hookimpl
from gnomon.core.registry import AttackSpec, DefenseSpec, ModelSpec


@hookimpl
def register_models(register):
    register(ModelSpec(name="tiny_net", summary="a tiny net", build=lambda shape, n: ("built", shape, n)))


@hookimpl
def register_attacks(register):
    register(AttackSpec(name="corner", summary="white corner trigger", factory=lambda **o: (lambda x: x)))


@hookimpl
def register_defenses(register):
    register(DefenseSpec(name="identity", summary="does nothing", factory=lambda **o: (lambda x, y=None: (x, y))))


@hookimpl
def register_workflows(register):
    register("my_flow", "{flow}")


@hookimpl
def register_commands(cli):
    @cli.command("hello-plugin")
    def hello():
        print("hello from a plugin")
"""


def _hook_names() -> list[str]:
    return sorted(n for n, f in vars(hookspecs).items() if inspect.isfunction(f) and n.startswith("register_"))


def test_a_plugin_can_implement_every_hook(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    flow = tmp_path / "my_flow.toml"
    flow.write_text("# a workflow\n")
    write_module(tmp_path, "fake_every", EVERY_HOOK_PLUGIN.format(flow=flow))
    plugins = load_plugins(environ={}, entry_points=[FakeEntryPoint("every", "fake_every")])
    registry = plugins.registry
    assert plugins.infos["every"].hooks == ["register_attacks", "register_commands", "register_defenses",
                                            "register_models", "register_workflows"]
    assert registry.models["tiny_net"].build((28, 28, 1), 10) == ("built", (28, 28, 1), 10)
    assert registry.attacks["corner"].plugin == "every" and registry.attacks["corner"].kind == "trigger"
    assert registry.defenses["identity"].kind == "preprocessor"
    assert registry.workflows["my_flow"].path == str(flow)
    assert registry.provided_by("every") == {"attacks": ["corner"], "defenses": ["identity"], "models": ["tiny_net"],
                                             "workflows": ["my_flow"]}
    app = typer.Typer()

    @app.callback()
    def _root():
        pass

    plugins.add_commands(app)
    result = CliRunner().invoke(app, ["hello-plugin"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output


def test_every_hook_is_documented():
    for name in _hook_names():
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert len(doc) > 150, f"hook {name} needs a reference docstring"
        assert "register(" in doc or "cli" in doc, f"hook {name}'s docstring must say how to call it"


def test_every_hook_is_tested():
    tests_dir = Path(__file__).parent
    sources = {p.name: p.read_text() for p in tests_dir.glob("test_*.py") if p.name != Path(__file__).name}
    sources[Path(__file__).name + "::plugin"] = EVERY_HOOK_PLUGIN
    for name in _hook_names():
        assert any(name in text for text in sources.values()), f"no test exercises hook {name}"


def test_every_hook_spec_has_the_register_signature():
    for name in _hook_names():
        params = list(inspect.signature(getattr(hookspecs, name)).parameters)
        assert params == (["cli"] if name == "register_commands" else ["register"]), name
