"""train / infer / init_model as real MLflow runs on the shipped MNIST sample."""

from __future__ import annotations

import types

import numpy as np
import pytest
from marshmallow import fields

from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import TaskSchema
from gnomon.core.tasks import Task

TARGET = 0
N_TRIGGERED = 50


class _WriterSchema(TaskSchema):
    dataset_tar_name = fields.String(load_default="testing_adversarial.tar")
    dataset_name = fields.String(load_default="adv_testing")


def _write_triggered(ctx, seed, dataset_tar_name, dataset_name):
    """Test task: MNIST test sample with a white 4x4 corner on 50 non-target images, logged as an artifact."""
    from gnomon.core.datasets import resolve_dataset, write_dataset_artifact

    ds = resolve_dataset(ctx, {}, run_id_field="run_id", default_split="testing")
    idx = np.flatnonzero(ds.y != TARGET)[:N_TRIGGERED]
    x = ds.x.copy()
    x[idx, -4:, -4:, :] = 1.0
    triggered = ds.replace(x=x, metadata={**ds.metadata, "target_class": TARGET, "trigger": "corner",
                                          "poisoned_indices": idx.tolist(),
                                          "poisoned_files": [ds.files[i] for i in idx]})
    write_dataset_artifact(ctx, triggered, dataset_tar_name, dataset_name)
    return {"n": len(triggered)}


def _writer_plugin():
    module = types.ModuleType("triggered_writer")

    def register_tasks(register):
        register(Task(name="write_triggered", summary="test: triggered MNIST artifact", schema=_WriterSchema,
                      fn=_write_triggered, category="data"))

    module.register_tasks = hookimpl(register_tasks)
    return module


def _metric_history(engine, run_id, key):
    return [(m.step, m.value) for m in engine.mlflow_client().get_metric_history(run_id, key)]


TRAIN = {"model_architecture": "le_net", "epochs": 1.5, "batch_size": 50, "validation_split": 0.1,
         "register_model": True, "seed": 7}


@pytest.mark.slow
def test_train_register_infer_on_artifact_and_directory(gnomon_engine_factory):
    """train (x2, same seed) -> registered versions 1, 2 -> infer on a folder and on a dataset artifact."""
    from gnomon.core import models as M
    from gnomon.core.datasets import read_dataset_artifact

    engine = gnomon_engine_factory(plugins=[_writer_plugin()])
    first = engine.run("train", dict(TRAIN))
    assert first.status == "FINISHED"
    assert first.outputs["model_name"] == "test_le_net" and first.outputs["model_version"] == "1"
    # 900 training images, batch 50 -> 18 steps per epoch; 1.5 epochs -> 18 + 9 batches in 2 epochs
    assert first.metrics["train_steps"] == 27 and first.metrics["epochs_completed"] == 2
    assert first.metrics["n_train"] == 900 and first.metrics["n_validation"] == 100
    assert [s for s, _ in _metric_history(engine, first.run_id, "val_accuracy")] == [1, 2]
    for key in ("loss", "accuracy", "precision", "recall", "auc", "training_time_s"):
        assert key in first.metrics
    assert first.metrics["accuracy"] > 0.6  # 1.5 epochs on 900 real digits

    second = engine.run("train", dict(TRAIN))
    assert second.outputs["model_version"] == "2"
    for key in ("loss", "accuracy", "auc", "train_loss", "val_loss"):  # same seed, same numbers (CPU)
        assert second.metrics[key] == first.metrics[key], key

    on_folder = engine.run("infer", {"model": "test_le_net"})
    assert on_folder.outputs["model_version"] == "2"
    assert on_folder.metrics["accuracy"] == pytest.approx(second.metrics["accuracy"], abs=1e-9)
    assert "attack_success_rate" not in on_folder.metrics

    written = engine.run("write_triggered", {})
    on_artifact = engine.run("infer", {"model": "test_le_net/1", "run_id": written.run_id, "batch_size": 64})
    assert on_artifact.outputs["model_version"] == "1"
    assert on_artifact.metrics["n_triggered"] == N_TRIGGERED
    assert 0.0 <= on_artifact.metrics["attack_success_rate"] <= 1.0
    # numbers survive the round trip: evaluating the artifact in memory gives infer's figures
    dataset = read_dataset_artifact(engine, written.run_id, "testing_adversarial.tar", "adv_testing")
    model = M.load_registered_model(engine, "test_le_net/1")
    direct = M.evaluate(model, dataset, batch_size=64)
    for key in ("accuracy", "attack_success_rate", "loss"):
        assert on_artifact.metrics[key] == pytest.approx(direct[key], rel=1e-6), key

    # train on the artifact (load_dataset_from_mlruns), registered under a tag
    on_data = engine.run("train", {"model_architecture": "shallow_net", "epochs": 0.5, "model_tag": "art",
                                   "load_dataset_from_mlruns": True, "training_dataset_run_id": written.run_id,
                                   "dataset_tar_name": "testing_adversarial.tar", "dataset_name": "adv_testing"})
    assert on_data.metrics["n_train"] + on_data.metrics["n_validation"] == 300
    assert on_data.outputs["model_name"] == "test_art_shallow_net"


def test_early_stopping_stops_and_restores(gnomon_engine):
    """min_delta larger than any possible gain: stops after patience + 1 epochs."""
    result = gnomon_engine.run("train", {"model_architecture": "shallow_net", "epochs": 6, "batch_size": 200,
                                         "early_stopping_patience": 1, "early_stopping_min_delta": 100.0,
                                         "register_model": False})
    assert result.metrics["epochs_completed"] == 2


def test_fractional_epoch_and_seed_change_results(gnomon_engine):
    """shallow_net, 0.5 epoch: half the batches; another seed gives another model."""
    params = {"model_architecture": "shallow_net", "epochs": 0.5, "batch_size": 100, "validation_split": 0.0,
              "optimizer": "sgd", "learning_rate": 0.1, "register_model": False}
    a = gnomon_engine.run("train", {**params, "seed": 1})
    assert a.metrics["train_steps"] == 5 and a.metrics["epochs_completed"] == 1
    assert "model_version" not in a.outputs and a.outputs["model_uri"].startswith("models:/")
    b = gnomon_engine.run("train", {**params, "seed": 2})
    assert a.metrics["loss"] != b.metrics["loss"]


# train with apply_defense=true (PGD adversarial training) end to end: test_adversarial_training_train.py


def test_apply_defense_refused_when_adversarial_training_is_missing(gnomon_engine, monkeypatch):
    from gnomon.core.errors import ParamValidationError
    from gnomon.plugins.builtin import training_tasks

    monkeypatch.setattr(training_tasks, "fit_adversarial_available", lambda: None)
    with pytest.raises(ParamValidationError, match="not available"):
        gnomon_engine.validate("train", {"apply_defense": "true"})
    assert gnomon_engine.validate("train", {"apply_defense": "false"})["apply_defense"] is False


def _runs(engine, home):
    """Runs in the store; a store that was never created has none (and is not created here)."""
    if not (home / "mlflow.db").exists():
        return []
    client = engine.mlflow_client()
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def _cli(args):
    from typer.testing import CliRunner

    from gnomon.cli import state
    from gnomon.cli.main import build_app

    state.reset()
    try:
        return CliRunner().invoke(build_app(), args)
    finally:
        state.reset()


@pytest.mark.parametrize("args, field", [
    (["-P", "optimizer=nadam"], "optimizer"),
    (["-P", "validation_split=1.5"], "validation_split"),
    (["-P", "validation_split=1.0"], "validation_split"),
    (["-P", "epochs=0"], "epochs"),
    (["-P", "model_architecture=lenet"], "model_architecture"),
    (["-P", "load_dataset_from_mlruns=true"], "training_dataset_run_id"),
    (["-P", "data_dir_test=/no/such/folder"], "data_dir_test"),
])
def test_bad_train_params_exit_2_without_a_run(gnomon_home, args, field):
    from gnomon.core.engine import Engine

    result = _cli(["run", "train", *args])
    assert result.exit_code == 2, result.output
    assert field in result.output
    assert _runs(Engine(experiment="gnomon"), gnomon_home) == []


def test_missing_model_or_version_exit_2_without_a_run(gnomon_home):
    from gnomon.core.engine import Engine

    engine = Engine(show_progress=False)
    client = engine.mlflow_client()
    client.create_registered_model("gnomon_le_net")
    client.create_model_version("gnomon_le_net", source="file:///nowhere/model")
    missing = _cli(["run", "infer", "-P", "model=gnomon_lenet"])
    assert missing.exit_code == 2 and "no registered model named 'gnomon_lenet'" in missing.output
    assert "gnomon_le_net" in missing.output  # lists what exists
    version = _cli(["run", "infer", "-P", "model=gnomon_le_net/5"])
    assert version.exit_code == 2 and "has no version 5" in version.output
    syntax = _cli(["run", "infer", "-P", "model=gnomon_le_net/v2"])
    assert syntax.exit_code == 2
    no_artifact = _cli(["run", "infer", "-P", "model=gnomon_le_net", "-P", "run_id=0123456789abcdef"])
    assert no_artifact.exit_code == 2 and "run_id" in no_artifact.output
    assert _runs(engine, gnomon_home) == []


def test_init_model_offline_imagenet_and_bad_weights_are_refused(gnomon_home, monkeypatch, tmp_path):
    monkeypatch.setenv("GNOMON_OFFLINE", "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    offline = _cli(["run", "init_model", "-P", "model_architecture=vgg16"])
    assert offline.exit_code == 2
    assert "weights=/path/to/vgg16_weights_tf_dim_ordering_tf_kernels.h5" in " ".join(offline.output.split())
    missing = _cli(["run", "init_model", "-P", f"weights={tmp_path / 'nope.h5'}"])
    assert missing.exit_code == 2 and "is not a file" in " ".join(missing.output.split())
    arch = _cli(["run", "init_model", "-P", "model_architecture=le_net", "-P", "weights=none"])
    assert arch.exit_code == 2 and "model_architecture" in arch.output


@pytest.mark.slow
def test_init_model_loads_a_local_weights_file(gnomon_engine, tmp_path):
    """The real keras.applications loading path with a weights file made here; registered and evaluated."""
    import keras

    source = keras.applications.ResNet50(include_top=True, weights=None, input_shape=(32, 32, 3), classes=10)
    path = tmp_path / "resnet50-mnist.weights.h5"
    source.save_weights(str(path))
    result = gnomon_engine.run("init_model", {"weights": str(path), "image_size": 32, "num_classes": 10,
                                              "model_tag": "pre", "batch_size": 100})
    assert result.outputs["model_name"] == "test_pre_resnet50"
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and result.metrics["n_samples"] == 300
    from gnomon.core import models as M

    loaded = M.load_registered_model(gnomon_engine, "test_pre_resnet50")
    inner = loaded.get_layer("resnet50")
    for name in ("conv1_conv", "predictions"):
        for got, want in zip(inner.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
    caffe = loaded.get_layer("caffe_preprocess").get_weights()
    assert caffe[0][0, 0, 2, 0] == 255.0 and caffe[1][0] == pytest.approx(-103.939)
