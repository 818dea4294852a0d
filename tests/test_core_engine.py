"""The engine runs tasks as real MLflow runs: params, tags, metrics, artifacts, FAILED runs, nothing on bad input."""

from __future__ import annotations

import pytest
from marshmallow import fields

from gnomon.core import __version__
from gnomon.core.engine import Engine
from gnomon.core.errors import ParamValidationError, TaskFailedError, UnknownNameError
from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import TaskSchema
from gnomon.core.tasks import Task


class _Schema(TaskSchema):
    value = fields.Integer(load_default=1)
    fail = fields.Boolean(load_default=False)


def _work(ctx, value, fail, seed):
    ctx.log_metric("value", value)
    ctx.log_metric("random", float(ctx.rng.random()))
    ctx.log_json({"value": value}, "out/result.json")
    if fail:
        raise RuntimeError("the task broke")
    ctx.output("doubled", value * 2)
    return {"tripled": value * 3}


def _check(engine, params):
    return {"value": ["13 is unlucky"]} if params["value"] == 13 else {}


class _Plugin:
    @hookimpl
    def register_tasks(self, register):
        register(Task(name="work", summary="does work", schema=_Schema, fn=_work, check=_check))


@pytest.fixture
def engine(gnomon_engine_factory):
    return gnomon_engine_factory(plugins=[_Plugin()])


def _runs(engine):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=engine.tracking_uri)
    exp = client.get_experiment_by_name(engine.experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_run_logs_params_tags_metrics_artifacts(engine, gnomon_home):
    result = engine.run("work", {"value": "5", "seed": "3"})
    assert result.status == "FINISHED"
    assert result.metrics["value"] == 5
    assert result.outputs == {"doubled": 10, "tripled": 15}
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=engine.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.params["value"] == "5" and run.data.params["fail"] == "False"
    tags = run.data.tags
    assert tags["gnomon.task"] == "work" and tags["gnomon.seed"] == "3"
    assert tags["gnomon.version"] == __version__ and tags["gnomon.output.doubled"] == "10"
    assert [a.path for a in client.list_artifacts(result.run_id, "out")] == ["out/result.json"]
    assert engine.tracking_uri.startswith("sqlite:///") and str(gnomon_home) in engine.tracking_uri


def test_same_seed_same_randomness(engine):
    a = engine.run("work", {"seed": 11}).metrics["random"]
    b = engine.run("work", {"seed": 11}).metrics["random"]
    c = engine.run("work", {"seed": 12}).metrics["random"]
    assert a == b != c


def test_failing_task_marks_run_failed(engine):
    with pytest.raises(TaskFailedError, match="the task broke") as info:
        engine.run("work", {"fail": True})
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=engine.tracking_uri)
    run = client.get_run(info.value.run_id)
    assert run.info.status == "FAILED"
    assert "RuntimeError: the task broke" in run.data.tags["gnomon.error"]
    assert "error.txt" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_invalid_params_create_nothing(engine, gnomon_home):
    with pytest.raises(ParamValidationError):
        engine.run("work", {"value": "x", "nope": 1})
    assert not (gnomon_home / "mlflow.db").exists()
    assert not (gnomon_home / "artifacts").exists()


def test_preflight_check_runs_before_any_run(engine):
    engine.run("work", {"value": 1})
    before = len(_runs(engine))
    with pytest.raises(ParamValidationError, match="unlucky"):
        engine.run("work", {"value": 13})
    assert len(_runs(engine)) == before


def test_unknown_task_suggests(engine):
    with pytest.raises(UnknownNameError, match="did you mean 'work'"):
        engine.task("wrok")


def test_experiment_from_environment(monkeypatch):
    monkeypatch.setenv("GNOMON_EXPERIMENT", "from-env")
    from gnomon.core.plugins import load_plugins

    assert Engine(load_plugins(environ={}, entry_points=[])).experiment == "from-env"
    assert Engine(load_plugins(environ={}, entry_points=[]), experiment="explicit").experiment == "explicit"


def test_tracking_uri_from_environment(gnomon_home, monkeypatch, tmp_path):
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from gnomon.core.plugins import load_plugins

    engine = Engine(load_plugins(environ={}, entry_points=[]), show_progress=False)
    assert engine.tracking_uri == uri


def test_dataset_summary_on_real_mnist_sample(gnomon_engine, mnist_sample_dirs):
    result = gnomon_engine.run("dataset_summary", {"data_dir": str(mnist_sample_dirs["testing"])})
    assert result.metrics["n_images"] == 300 and result.metrics["n_classes"] == 10
    assert 0.05 < result.metrics["pixel_mean"] < 0.25



def test_an_experiment_id_handed_to_the_engine_is_used_without_a_lookup(gnomon_engine_factory, monkeypatch):
    """A worker's job gets the experiment id its submitter resolved: no lookup per job."""
    from gnomon.core import tracking

    known = gnomon_engine_factory(plugins=[_Plugin()], experiment="handed").ensure_tracking()
    engine = gnomon_engine_factory(plugins=[_Plugin()], experiment="handed")

    def no_lookup(*args, **kwargs):
        raise AssertionError("looked the experiment up")

    monkeypatch.setattr(tracking, "ensure_experiment", no_lookup)
    engine.use_experiment_id(known)
    result = engine.run("work", {"value": 2})
    assert result.experiment_id == known and engine.ensure_tracking() == known
    assert result.outputs == {"doubled": 4, "tripled": 6}



class _Long:
    @hookimpl
    def register_tasks(self, register):
        register(Task(name="long", summary="long output", schema=_Schema,
                      fn=lambda ctx, value, fail, seed: ctx.output("blob", "x" * 9000)))


def test_an_output_too_long_for_a_run_tag_fails_the_run_naming_it(gnomon_engine_factory):
    engine = gnomon_engine_factory(plugins=[_Long()])
    with pytest.raises(TaskFailedError, match="output 'blob' is 9000 characters long"):
        engine.run("long", {})


def test_logging_an_artifact_does_not_read_the_run_back(engine, monkeypatch):
    """MLflow learns where a new run's artifacts go from the run's creation, not from one more read."""
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    reads = []
    original = TrackingServiceClient.get_run
    monkeypatch.setattr(TrackingServiceClient, "get_run", lambda self, run_id: reads.append(run_id) or
                        original(self, run_id))
    result = engine.run("work", {"value": 4})
    assert reads == [result.run_id]  # the engine's one read of the finished run's metrics
    client = engine.mlflow_client()
    assert [f.path for f in client.list_artifacts(result.run_id, "out")] == ["out/result.json"]

    from gnomon.core import engine as engine_module

    monkeypatch.setattr(engine_module, "_know_artifact_location", lambda *args: None)
    reads.clear()
    engine.run("work", {"value": 4})
    assert len(reads) == 2  # without it MLflow reads the run back at the first artifact
