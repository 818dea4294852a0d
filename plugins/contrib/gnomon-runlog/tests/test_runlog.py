"""gnomon-runlog: one JSON line per run, failures included, through the installed entry point."""

from __future__ import annotations

import json

import pytest
from marshmallow import fields

from gnomon.core.engine import Engine
from gnomon.core.errors import TaskFailedError
from gnomon.core.hookspecs import hookimpl
from gnomon.core.plugins import PluginInfo, _register, load_plugins
from gnomon.core.schemas import TaskSchema
from gnomon.core.tasks import Task


class _Schema(TaskSchema):
    fail = fields.Boolean(load_default=False)


def _work(ctx, fail, seed):
    ctx.log_metric("m", 1.5)
    if fail:
        raise RuntimeError("boom")


class _Tasks:
    @hookimpl
    def register_tasks(self, register):
        register(Task(name="work", summary="work", schema=_Schema, fn=_work))


@pytest.fixture
def engine(tmp_path, monkeypatch):
    monkeypatch.setenv("GNOMON_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GNOMON_RUNLOG", str(tmp_path / "runs.jsonl"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plugins = load_plugins(environ={"GNOMON_LOAD_PLUGINS": "runlog"}, builtins=False)
    assert "runlog" in plugins.infos and not plugins.infos["runlog"].broken
    _register(plugins, PluginInfo(name="tasks", source="test"), _Tasks)
    return Engine(plugins, experiment="runlog-test", show_progress=False)


def test_one_line_per_run_including_failures(engine, tmp_path):
    ok = engine.run("work", {})
    with pytest.raises(TaskFailedError):
        engine.run("work", {"fail": True})
    lines = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [(r["task"], r["status"]) for r in lines] == [("work", "FINISHED"), ("work", "FAILED")]
    assert lines[0]["run_id"] == ok.run_id and lines[0]["metrics"]["m"] == 1.5 and lines[0]["error"] is None
    assert lines[1]["error"] == "RuntimeError: boom" and lines[1]["params"]["fail"] is True
    tags = engine.mlflow_client().get_run(ok.run_id).data.tags
    assert "runlog.started_at" in tags
