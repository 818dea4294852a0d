"""before_run/after_run: order, what they see (failures included), and the error policy, on real MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from marshmallow import fields

from gnomon.core.errors import GnomonError, HookError, TaskFailedError
from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import TaskSchema
from gnomon.core.tasks import Task

REPO = Path(__file__).resolve().parents[1]


class _Schema(TaskSchema):
    mode = fields.String(load_default="ok")


def _work(ctx, mode, seed):
    getattr(ctx, "calls", []).append("task")
    ctx.log_metric("m", 2.0)
    if mode == "fail":
        raise RuntimeError("the task broke")
    if mode == "interrupt":
        raise KeyboardInterrupt
    return {"out": 1}


class _Tasks:
    @hookimpl
    def register_tasks(self, register):
        register(Task(name="work", summary="work", schema=_Schema, fn=_work))


class _Recorder:
    """A plugin that records its hook calls in a shared list."""

    def __init__(self, name, calls, *, before_raises=None, after_raises=None):
        self.name, self.calls, self.before_raises, self.after_raises = name, calls, before_raises, after_raises

    @hookimpl
    def before_run(self, ctx):
        ctx.calls = self.calls  # the task appends to the same list
        self.calls.append(f"{self.name}.before:{ctx.task}:{ctx.run_id is not None}")
        if self.before_raises:
            raise self.before_raises

    @hookimpl
    def after_run(self, ctx, result):
        self.calls.append(f"{self.name}.after:{result.status}:{result.error}:{result.metrics.get('m')}")
        if self.after_raises:
            raise self.after_raises


def _engine(factory, *plugins):
    from gnomon.core.plugins import PluginInfo, _register

    engine = factory(plugins=[_Tasks()], builtins=False)
    for plugin in plugins:  # in load order
        _register(engine.plugins, PluginInfo(name=plugin.name, source="test"), lambda p=plugin: p)
    return engine


def _run_info(engine, run_id):
    run = engine.mlflow_client().get_run(run_id)
    return run.info.status, run.data.tags


def test_order_and_what_a_successful_run_shows(gnomon_engine_factory):
    calls: list[str] = []
    engine = _engine(gnomon_engine_factory, _Recorder("first", calls), _Recorder("second", calls))
    result = engine.run("work", {})
    # pluggy's order: the plugin loaded last runs first, for both hooks
    assert calls == ["second.before:work:True", "first.before:work:True", "task",
                     "second.after:FINISHED:None:2.0", "first.after:FINISHED:None:2.0"]
    assert result.status == "FINISHED" and result.outputs == {"out": 1} and result.error is None
    assert _run_info(engine, result.run_id)[0] == "FINISHED"


def test_after_run_sees_a_failed_task(gnomon_engine_factory):
    calls: list[str] = []
    engine = _engine(gnomon_engine_factory, _Recorder("obs", calls))
    with pytest.raises(TaskFailedError) as excinfo:
        engine.run("work", {"mode": "fail"})
    assert calls == ["obs.before:work:True", "task", "obs.after:FAILED:RuntimeError: the task broke:2.0"]
    assert _run_info(engine, excinfo.value.run_id)[0] == "FAILED"


def test_after_run_sees_an_interrupted_run(gnomon_engine_factory):
    calls: list[str] = []
    engine = _engine(gnomon_engine_factory, _Recorder("obs", calls))
    with pytest.raises(KeyboardInterrupt):
        engine.run("work", {"mode": "interrupt"})
    assert calls[-1].startswith("obs.after:KILLED:KeyboardInterrupt")


def test_a_raising_before_run_refuses_the_run(gnomon_engine_factory):
    calls: list[str] = []
    policy = _Recorder("policy", calls, before_raises=GnomonError("policy: no work today"))
    engine = _engine(gnomon_engine_factory, _Recorder("obs", calls), policy)
    with pytest.raises(TaskFailedError) as excinfo:
        engine.run("work", {})
    assert isinstance(excinfo.value.cause, HookError) and excinfo.value.cause.plugin == "policy"
    # the task never ran, the other before_run was skipped, every after_run saw the failure
    assert "task" not in calls and "obs.before:work:True" not in calls
    assert calls[0] == "policy.before:work:True"
    assert [c.split(":")[1] for c in calls[1:]] == ["FAILED", "FAILED"]
    assert "plugin 'policy' before_run: GnomonError: policy: no work today" in calls[1]
    status, tags = _run_info(engine, excinfo.value.run_id)
    assert status == "FAILED" and "plugin 'policy'" in tags["gnomon.error"]


def test_a_raising_after_run_changes_nothing_else(gnomon_engine_factory, capsys):
    calls: list[str] = []
    broken = _Recorder("broken", calls, after_raises=ValueError("notifier down"))
    engine = _engine(gnomon_engine_factory, _Recorder("obs", calls), broken)
    result = engine.run("work", {})
    assert result.status == "FINISHED"
    assert calls[-2:] == ["broken.after:FINISHED:None:2.0", "obs.after:FINISHED:None:2.0"]  # obs still ran
    status, tags = _run_info(engine, result.run_id)
    assert status == "FINISHED"
    assert tags["gnomon.hook_error.broken"] == "plugin 'broken' after_run: ValueError: notifier down"
    assert "plugin 'broken' after_run: ValueError: notifier down" in capsys.readouterr().err


def test_strict_mode_raises_a_failing_after_run_once_the_run_ended(gnomon_engine_factory):
    calls: list[str] = []
    engine = _engine(gnomon_engine_factory, _Recorder("broken", calls, after_raises=ValueError("x")))
    engine.plugins.strict = True
    with pytest.raises(HookError, match="plugin 'broken' after_run"):
        engine.run("work", {})
    import mlflow

    assert mlflow.active_run() is None
    runs = engine.mlflow_client().search_runs([engine.ensure_tracking()])
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_invalid_params_start_no_run_and_call_no_hook(gnomon_engine_factory):
    calls: list[str] = []
    engine = _engine(gnomon_engine_factory, _Recorder("obs", calls))
    with pytest.raises(GnomonError):
        engine.run("work", {"nope": 1})
    assert calls == []


def test_the_contrib_runlog_example_as_a_directory_plugin(gnomon_home, tmp_path, monkeypatch):
    from gnomon.core.engine import Engine
    from gnomon.core.plugins import PluginInfo, _register, load_plugins

    monkeypatch.setenv("GNOMON_RUNLOG", str(tmp_path / "runs.jsonl"))
    plugins = load_plugins(environ={}, builtins=False, entry_points=[],
                           plugin_path=[REPO / "plugins" / "contrib" / "gnomon-runlog" / "src"])
    assert not plugins.infos["gnomon_runlog"].broken
    assert {"before_run", "after_run"} <= set(plugins.infos["gnomon_runlog"].hooks)
    _register(plugins, PluginInfo(name="tasks", source="test"), _Tasks)
    engine = Engine(plugins, experiment="test", show_progress=False)
    engine.run("work", {})
    with pytest.raises(TaskFailedError):
        engine.run("work", {"mode": "fail"})
    lines = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [(r["task"], r["status"], r["error"]) for r in lines] == [
        ("work", "FINISHED", None), ("work", "FAILED", "RuntimeError: the task broke")]
