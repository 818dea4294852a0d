"""Plugin discovery and loading: builtins, fake entry points, directories, allow/deny lists, broken plugins."""

from __future__ import annotations

import pytest

from gnomon.core.errors import PluginError
from gnomon.core.plugins import load_plugins
from tests.plugin_fakes import TASK_PLUGIN, FakeEntryPoint, write_module


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    d = tmp_path / "mods"
    d.mkdir()
    monkeypatch.syspath_prepend(str(d))
    return d


BUILTINS = {"builtin.utility_tasks", "builtin.models", "builtin.training_tasks", "builtin.triggers",
            "builtin.literature_triggers", "builtin.attack_tasks", "builtin.defenses", "builtin.defense_tasks",
            "builtin.detection_tasks", "builtin.workflows", "builtin.commands"}


def test_builtins_are_a_list_of_ordinary_plugins(gnomon_home):
    plugins = load_plugins(environ={}, entry_points=[])
    assert set(plugins.infos) == BUILTINS
    for info in plugins.infos.values():
        assert (info.source, info.package, info.broken, info.warnings) == ("builtin", "builtin", False, [])
        assert info.module == "gnomon.plugins.builtin." + info.name.split(".", 1)[1]
        assert len(info.hooks) == 1  # each registers one kind of thing, through the public hooks
    assert plugins.infos["builtin.models"].hooks == ["register_models"]
    assert plugins.registry.tasks["dataset_summary"].plugin == "builtin.utility_tasks"
    assert plugins.registry.attacks["pattern"].plugin == "builtin.triggers"
    # nothing in core names them: they come from the gnomon.builtin entry point of gnomon's own metadata
    from importlib.metadata import entry_points

    assert [ep.value for ep in entry_points(group="gnomon.builtin")] == ["gnomon.plugins.builtin"]


def test_one_builtin_plugin_can_be_disabled_and_the_rest_keep_working(gnomon_home):
    from gnomon.core.engine import Engine
    from gnomon.core.errors import ParamValidationError

    plugins = load_plugins(environ={"GNOMON_DISABLE_PLUGINS": "builtin.triggers"}, entry_points=[])
    assert set(plugins.infos) == BUILTINS - {"builtin.triggers"}
    assert ("builtin.triggers", "builtin", "disabled by GNOMON_DISABLE_PLUGINS") in plugins.skipped
    registry = plugins.registry
    assert "pattern" not in registry.attacks and "blended" in registry.attacks
    assert {"train", "infer", "gen_poison_test_data", "spatial_smoothing"} <= set(registry.tasks)
    engine = Engine(plugins=plugins)
    assert engine.validate("train", {"epochs": "1"}, preflight=False)["epochs"] == 1
    with pytest.raises(ParamValidationError) as err:
        engine.validate("gen_poison_test_data", {"trigger": "pattern"}, preflight=False)
    assert "trigger: must be one of the registered attacks: blended, sig, warp" in str(err.value)
    assert engine.validate("gen_poison_test_data", {"trigger": "blended"}, preflight=False)["trigger"] == "blended"


def test_a_third_party_plugin_package_registers_each_part(tmp_path):
    pkg = tmp_path / "dirs" / "suite"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('GNOMON_PLUGINS = ("one", "two")\n')
    (pkg / "helpers.py").write_text('PREFIX = "suite"\n')
    for part in ("one", "two"):
        (pkg / f"{part}.py").write_text(TASK_PLUGIN.format(task=f"suite_{part}", extra="").replace(
            "from gnomon.core.hookspecs", "from .helpers import PREFIX\nfrom gnomon.core.hookspecs"))
    plugins = load_plugins(environ={}, builtins=False, entry_points=[], plugin_path=[tmp_path / "dirs"])
    assert set(plugins.infos) == {"suite.one", "suite.two"}
    assert plugins.infos["suite.one"].module == "gnomon_dir_plugins.suite.one"
    assert plugins.registry.tasks["suite_two"].plugin == "suite.two"
    only_one = load_plugins(environ={"GNOMON_LOAD_PLUGINS": "suite.one"}, builtins=False, entry_points=[],
                            plugin_path=[tmp_path / "dirs"])
    assert set(only_one.infos) == {"suite.one"}
    none = load_plugins(environ={"GNOMON_DISABLE_PLUGINS": "suite"}, builtins=False, entry_points=[],
                        plugin_path=[tmp_path / "dirs"])
    assert none.infos == {} and ("suite", "directory", "disabled by GNOMON_DISABLE_PLUGINS") in none.skipped


def test_fresh_plugin_manager_each_time():
    a = load_plugins(environ={}, entry_points=[])
    b = load_plugins(environ={}, entry_points=[])
    assert a.pm is not b.pm
    assert a.registry is not b.registry


def test_entry_point_plugin_is_discovered_with_its_distribution(plugin_dir):
    write_module(plugin_dir, "fake_echo", TASK_PLUGIN.format(task="echo", extra=""))
    plugins = load_plugins(environ={}, entry_points=[FakeEntryPoint("echo", "fake_echo", version="9.9")])
    info = plugins.infos["echo"]
    assert (info.source, info.version, info.broken) == ("entry point", "9.9", False)
    assert plugins.registry.tasks["echo"].plugin == "echo"
    assert plugins.registry.provided_by("echo") == {"tasks": ["echo"]}


def test_allow_list_empty_means_builtins_only(plugin_dir):
    write_module(plugin_dir, "fake_a", TASK_PLUGIN.format(task="task_a", extra=""))
    eps = [FakeEntryPoint("a", "fake_a")]
    plugins = load_plugins(environ={"GNOMON_LOAD_PLUGINS": ""}, entry_points=eps)
    assert set(plugins.infos) == BUILTINS
    assert ("a", "entry point", "not in GNOMON_LOAD_PLUGINS") in plugins.skipped


def test_allow_and_deny_lists(plugin_dir):
    write_module(plugin_dir, "fake_a", TASK_PLUGIN.format(task="task_a", extra=""))
    write_module(plugin_dir, "fake_b", TASK_PLUGIN.format(task="task_b", extra=""))
    eps = [FakeEntryPoint("a", "fake_a"), FakeEntryPoint("b", "fake_b")]
    only_a = load_plugins(environ={"GNOMON_LOAD_PLUGINS": "a"}, entry_points=eps)
    assert set(only_a.infos) == BUILTINS | {"a"}
    no_b = load_plugins(environ={"GNOMON_DISABLE_PLUGINS": "b,builtin"}, entry_points=eps)
    assert set(no_b.infos) == {"a"}
    # the distribution name works as well as the entry-point name
    by_dist = load_plugins(environ={"GNOMON_LOAD_PLUGINS": "gnomon-b"}, entry_points=eps)
    assert set(by_dist.infos) == BUILTINS | {"b"}


def test_broken_import_is_reported_not_fatal(plugin_dir):
    write_module(plugin_dir, "fake_broken", "import this_module_does_not_exist_xyz\n")
    write_module(plugin_dir, "fake_ok", TASK_PLUGIN.format(task="ok_task", extra=""))
    eps = [FakeEntryPoint("broken", "fake_broken"), FakeEntryPoint("ok", "fake_ok")]
    plugins = load_plugins(environ={}, entry_points=eps)
    broken = plugins.infos["broken"]
    assert broken.broken and "this_module_does_not_exist_xyz" in broken.error
    assert "install the missing module" in broken.hint
    assert "ok_task" in plugins.registry.tasks and "dataset_summary" in plugins.registry.tasks


def test_strict_mode_makes_a_broken_plugin_fatal(plugin_dir):
    write_module(plugin_dir, "fake_broken2", "raise RuntimeError('boom at import')\n")
    with pytest.raises(PluginError, match="boom at import"):
        load_plugins(environ={"GNOMON_STRICT_PLUGINS": "1"}, entry_points=[FakeEntryPoint("broken2", "fake_broken2")])


def test_duplicate_task_name_names_both_plugins(plugin_dir):
    write_module(plugin_dir, "fake_dup", TASK_PLUGIN.format(task="dataset_summary", extra=""))
    plugins = load_plugins(environ={}, entry_points=[FakeEntryPoint("dup", "fake_dup")])
    registry = plugins.registry
    assert registry.tasks["dataset_summary"].plugin == "builtin.utility_tasks"
    error = plugins.infos["dup"].error
    assert "'builtin.utility_tasks'" in error and "'dup'" in error and "dataset_summary" in error
    with pytest.raises(PluginError, match="builtin.utility_tasks"):
        _ = load_plugins(environ={"GNOMON_STRICT_PLUGINS": "1"},
                         entry_points=[FakeEntryPoint("dup", "fake_dup")]).registry


def test_duplicate_model_name_names_both_plugins(plugin_dir):
    write_module(plugin_dir, "fake_m1", """
        from gnomon.core.hookspecs import hookimpl
        from gnomon.core.registry import ModelSpec
        @hookimpl
        def register_models(register):
            register(ModelSpec(name="twin", summary="a", build=lambda s, n: None))
    """)
    write_module(plugin_dir, "fake_m2", open(plugin_dir / "fake_m1.py").read())
    plugins = load_plugins(environ={}, entry_points=[FakeEntryPoint("m1", "fake_m1"), FakeEntryPoint("m2", "fake_m2")])
    assert plugins.registry.models["twin"].plugin == "m1"
    assert "model 'twin' is registered by two plugins: 'm1' and 'm2'" in plugins.infos["m2"].error


def test_unknown_hook_and_bad_registration_are_broken(plugin_dir):
    write_module(plugin_dir, "fake_badhook", """
        from gnomon.core.hookspecs import hookimpl
        @hookimpl
        def register_taskz(register):
            pass
    """)
    write_module(plugin_dir, "fake_badreg", """
        from gnomon.core.hookspecs import hookimpl
        @hookimpl
        def register_tasks(register):
            register({"name": "not a Task"})
    """)
    write_module(plugin_dir, "fake_badname", TASK_PLUGIN.format(task="Bad-Name", extra=""))
    eps = [FakeEntryPoint("badhook", "fake_badhook"), FakeEntryPoint("badreg", "fake_badreg"),
           FakeEntryPoint("badname", "fake_badname")]
    plugins = load_plugins(environ={}, entry_points=eps)
    _ = plugins.registry
    assert "register_taskz" in plugins.infos["badhook"].error
    assert "expected gnomon.core.tasks.Task" in plugins.infos["badreg"].error
    assert "lower_snake_case" in plugins.infos["badname"].error
    assert "dataset_summary" in plugins.registry.tasks


def test_plugin_directories_load_files_and_packages(tmp_path):
    d = tmp_path / "plugin-path"
    (d / "pkgplug").mkdir(parents=True)
    (d / "fileplug.py").write_text(TASK_PLUGIN.format(task="from_file", extra=""))
    (d / "pkgplug" / "__init__.py").write_text("from .impl import register_tasks\n")
    (d / "pkgplug" / "impl.py").write_text(TASK_PLUGIN.format(task="from_package", extra=""))
    (d / "notes.txt").write_text("ignored")
    plugins = load_plugins(environ={"GNOMON_PLUGIN_PATH": str(d)}, entry_points=[])
    assert plugins.infos["fileplug"].source == "directory"
    assert {"from_file", "from_package"} <= set(plugins.registry.tasks)


def test_later_plugin_with_same_name_replaces_earlier(tmp_path, plugin_dir):
    write_module(plugin_dir, "fake_v1", TASK_PLUGIN.format(task="v1_task", extra=""))
    d = tmp_path / "pulled"
    d.mkdir()
    (d / "same.py").write_text(TASK_PLUGIN.format(task="v2_task", extra=""))
    plugins = load_plugins(environ={"GNOMON_PLUGIN_PATH": str(d)}, entry_points=[FakeEntryPoint("same", "fake_v1")])
    assert plugins.infos["same"].source == "directory"
    assert "entry point" in plugins.infos["same"].shadows
    assert "v2_task" in plugins.registry.tasks and "v1_task" not in plugins.registry.tasks


def test_trace_writes_hook_calls_to_stderr(capsys):
    plugins = load_plugins(environ={"GNOMON_TRACE_PLUGINS": "1"}, entry_points=[])
    _ = plugins.registry
    assert "register_tasks" in capsys.readouterr().err


def test_register_commands_failure_is_reported(plugin_dir):
    import typer

    write_module(plugin_dir, "fake_cmd", """
        from gnomon.core.hookspecs import hookimpl
        @hookimpl
        def register_commands(cli):
            raise ValueError("cannot add my command")
    """)
    plugins = load_plugins(environ={}, entry_points=[FakeEntryPoint("cmd", "fake_cmd")])
    plugins.add_commands(typer.Typer())
    assert "cannot add my command" in plugins.infos["cmd"].error
