"""gen_poison_model (adversarial embedding), gen_poison_clean_data (clean label) and infer's attack
success rate, run for real with ART and TensorFlow on the shipped MNIST sample.

One small le_net is trained once per module (proxy model / model under attack) in its own
MLflow store; each test points GNOMON_HOME there.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import pytest

from gnomon.core.errors import ParamValidationError

PATTERN = {(26, 26), (25, 25), (26, 24), (24, 26)}


def make_engine():
    from gnomon.core.engine import Engine
    from gnomon.core.plugins import load_plugins

    return Engine(load_plugins(environ={}), experiment="test", show_progress=False)


def n_runs(engine) -> int:
    client = engine.mlflow_client()
    experiment = client.get_experiment_by_name(engine.experiment)
    return 0 if experiment is None else len(client.search_runs([experiment.experiment_id]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_sample_dirs):
    """A module-wide store holding a le_net trained 1 epoch on the sample (registered as version 1)."""
    home = tmp_path_factory.mktemp("attack-models-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("GNOMON_HOME", str(home))
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI, which would point this store at an earlier test's
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        engine = make_engine()
        result = engine.run("train", {"data_dir_train": str(mnist_sample_dirs["training"]),
                                      "data_dir_test": str(mnist_sample_dirs["testing"]), "epochs": 1,
                                      "batch_size": 32, "validation_split": 0.0, "register_model": True,
                                      "model_tag": "proxy", "seed": 1})
    finally:
        mp.undo()
    return {"home": home, "model": f"{result.outputs['model_name']}/{result.outputs['model_version']}",
            "accuracy": result.metrics["accuracy"]}


@pytest.fixture
def engine(trained, monkeypatch):
    monkeypatch.setenv("GNOMON_HOME", str(trained["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return make_engine()


# -- infer reads the target class from the artifact's metadata -----------------------------


def test_infer_reports_attack_success_rate_from_metadata(engine, trained, mnist_sample_dirs):
    from gnomon.core.datasets import read_dataset_artifact
    from gnomon.core.models import load_registered_model

    poisoned = engine.run("gen_poison_test_data", {"data_dir": str(mnist_sample_dirs["testing"]),
                                                   "poison_fraction": 0.5, "target_class": 2, "seed": 3})
    result = engine.run("infer", {"model": trained["model"], "run_id": poisoned.run_id,
                                  "dataset_tar_name": "adversarial_poison.tar.gz", "dataset_name": "adv_poison_data"})
    assert "attack_success_rate" in result.metrics
    # independent computation on the artifact as stored
    data = read_dataset_artifact(engine, poisoned.run_id, "adversarial_poison.tar.gz", "adv_poison_data")
    preds = load_registered_model(engine, trained["model"]).predict(data.x, verbose=0).argmax(axis=1)
    triggered = np.array([f in set(data.metadata["poisoned_files"]) for f in data.files])
    counted = triggered & (data.y != 2)
    assert counted.sum() > 100
    assert result.metrics["attack_success_rate"] == pytest.approx(np.mean(preds[counted] == 2), abs=1e-9)
    assert result.metrics["accuracy"] == pytest.approx(np.mean(preds == data.y), abs=1e-9)


# -- clean label ---------------------------------------------------------------------------


@pytest.mark.slow
def test_clean_label_poisons_only_the_target_class_within_eps(engine, trained, mnist_sample_dirs,
                                                              mnist_sample_arrays):
    from gnomon.core.datasets import read_dataset_artifact

    images, labels = mnist_sample_arrays["training"]
    target, eps = 7, 0.1
    result = engine.run("gen_poison_clean_data", {
        "data_dir": str(mnist_sample_dirs["training"]), "model": trained["model"], "target_class": target,
        "poison_fraction": 0.5, "norm": "inf", "eps": eps, "eps_step": 0.05, "max_iter": 4, "batch_size": 64,
        "seed": 5})
    assert result.status == "FINISHED"
    data = read_dataset_artifact(engine, result.run_id, "adversarial_poison.tar.gz", "adv_poison_data")
    n_target = int((labels == target).sum())
    poisoned = set(data.metadata["poisoned_files"])
    assert len(poisoned) == round(0.5 * n_target) == result.metrics["n_poisoned"]
    truth = data.poison_ground_truth()
    assert truth is not None and {f for f, m in zip(data.files, truth, strict=True) if m} == poisoned
    assert data.metadata["target_class"] == target
    assert data.metadata["proxy_model"] == trained["model"]
    reference = images.astype(np.float32) / 255.0
    outside = np.ones((28, 28), bool)
    for r, c in PATTERN:
        outside[r, c] = False
    changed = 0
    for k, name in enumerate(data.files):
        i = int(PurePosixPath(name).stem)
        assert int(data.y[k]) == int(labels[i]), "clean-label poisoning must keep every label"
        x = data.x[k, ..., 0]
        if name in poisoned:
            assert labels[i] == target
            diff = np.abs(x[outside] - reference[i][outside])
            assert diff.max() <= eps + 0.5 / 255 + 1e-6  # PGD budget, plus 8-bit storage rounding
            changed += int(diff.max() > 0)
            assert all(x[r, c] == 1.0 for r, c in PATTERN)
        else:
            np.testing.assert_array_equal(x, reference[i])
    assert changed >= 0.9 * len(poisoned), "PGD should move nearly every poison"
    assert 0 < result.metrics["pgd_linf_max"] <= eps + 1e-6
    # same seed, same choice of samples
    again = engine.run("gen_poison_clean_data", {
        "data_dir": str(mnist_sample_dirs["training"]), "model": trained["model"], "target_class": target,
        "poison_fraction": 0.5, "eps": eps, "eps_step": 0.05, "max_iter": 1, "seed": 5,
        "output_tar_name": "again.tar"})
    again_data = read_dataset_artifact(engine, again.run_id, "again.tar", "adv_poison_data")
    assert set(again_data.metadata["poisoned_files"]) == poisoned
    assert again_data.metadata["pgd"]["norm"] == "2"  # the default: an L2 budget
    assert 0 < again.metrics["pgd_l2_max"] <= eps + 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("trigger", ["blended", "sig", "warp"])
def test_clean_label_with_the_literature_triggers(engine, trained, mnist_sample_dirs, mnist_sample_arrays, trigger):
    """The clean-label attack stamps blended/sig/warp after PGD, on target-class samples only, labels kept."""
    from gnomon.core.datasets import read_dataset_artifact
    from gnomon.plugins.builtin.literature_triggers import blended_trigger, sig_trigger, warp_trigger

    images, labels = mnist_sample_arrays["training"]
    result = engine.run("gen_poison_clean_data", {
        "data_dir": str(mnist_sample_dirs["training"]), "model": trained["model"], "target_class": 3,
        "poison_fraction": 0.2, "eps": 0.5, "eps_step": 0.5, "max_iter": 1, "trigger": trigger, "seed": 3,
        "output_tar_name": f"{trigger}.tar"})
    data = read_dataset_artifact(engine, result.run_id, f"{trigger}.tar", "adv_poison_data")
    truth = data.poison_ground_truth()
    assert truth.sum() == round(0.2 * (labels == 3).sum()) and np.all(data.y[truth] == 3)
    assert data.metadata["trigger"] == trigger
    originals = np.stack([images[int(PurePosixPath(f).stem)] for f in data.files]).astype(np.float32) / 255.0
    np.testing.assert_array_equal(data.x[~truth][..., 0], originals[~truth])
    # a poison is the trigger applied to a PGD image within eps (L2 0.5) of the original: applying the
    # trigger to the original lands close to it, and much closer than the untriggered original does
    fn = {"blended": blended_trigger, "sig": sig_trigger, "warp": warp_trigger}[trigger]()
    stamped = fn(originals[truth][..., None])
    to_stamped = np.sqrt(((data.x[truth] - stamped) ** 2).sum(axis=(1, 2, 3)))
    to_original = np.sqrt(((data.x[truth][..., 0] - originals[truth]) ** 2).sum(axis=(1, 2)))
    assert np.median(to_stamped) < 0.5 * np.median(to_original)


@pytest.mark.parametrize("params, field", [
    ({"model": "no_such_model"}, "model"),
    ({"target_class": 10}, "target_class"),
    ({"poison_fraction": 2}, "poison_fraction"),
    ({"norm": "3"}, "norm"),
])
def test_clean_label_bad_input_is_refused_before_any_run(engine, trained, mnist_sample_dirs, params, field):
    before = n_runs(engine)
    with pytest.raises(ParamValidationError) as info:
        engine.run("gen_poison_clean_data", {"data_dir": str(mnist_sample_dirs["training"]),
                                             "model": trained["model"], **params})
    assert field in info.value.errors, info.value.errors
    assert n_runs(engine) == before


def test_clean_label_refuses_data_of_another_shape(engine, trained, tmp_path):
    from PIL import Image

    for label in ("0", "1"):
        (tmp_path / label).mkdir()
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / label / "a.png")
    before = n_runs(engine)
    with pytest.raises(ParamValidationError) as info:
        engine.run("gen_poison_clean_data", {"data_dir": str(tmp_path), "model": trained["model"],
                                             "target_class": 1})
    assert "(32, 32, 3)" in " ".join(info.value.errors["data_dir"])
    assert n_runs(engine) == before


# -- adversarial embedding -----------------------------------------------------------------


@pytest.mark.slow
def test_adversarial_embedding_trains_registers_and_measures(engine, mnist_sample_dirs):
    from gnomon.core.models import load_registered_model

    result = engine.run("gen_poison_model", {
        "data_dir_train": str(mnist_sample_dirs["training"]), "data_dir_test": str(mnist_sample_dirs["testing"]),
        "epochs": 1, "batch_size": 64, "training_split": 0.5, "poison_fraction": 0.2, "target_class_id": 4,
        "register_model": True, "model_tag": "embedded", "regularization_factor": 0.5, "seed": 2})
    assert result.status == "FINISHED"
    metrics = result.metrics
    assert metrics["n_train"] == 500
    # ART draws each non-target sample with probability poison_fraction
    assert 0.1 * 450 < metrics["n_poisoned"] < 0.3 * 500
    assert metrics["target_class"] == 4 and metrics["feature_layer_index"] == 6
    for key in ("test_accuracy", "attack_success_rate", "triggered_accuracy", "l2_mean", "train_loss"):
        assert key in metrics, key
    assert 0.0 <= metrics["attack_success_rate"] <= 1.0
    model = load_registered_model(engine, f"{result.outputs['model_name']}/{result.outputs['model_version']}")
    assert result.outputs["model_name"].endswith("_embedded_le_net")
    assert model.outputs[0].shape[-1] == 10


@pytest.mark.parametrize("params, field", [
    ({"feature_layer_index": 7}, "feature_layer_index"),
    ({"feature_layer_index": -1}, "feature_layer_index"),
    ({"target_class_id": 12}, "target_class_id"),
    ({"poison_fraction": 1.01}, "poison_fraction"),
    ({"training_split": 0}, "training_split"),
    ({"regularization_factor": 0}, "regularization_factor"),
])
def test_adversarial_embedding_bad_input_is_refused_before_any_run(engine, mnist_sample_dirs, params, field):
    before = n_runs(engine)
    with pytest.raises(ParamValidationError) as info:
        engine.run("gen_poison_model", {"data_dir_train": str(mnist_sample_dirs["training"]),
                                        "data_dir_test": str(mnist_sample_dirs["testing"]), **params})
    assert field in info.value.errors, info.value.errors
    assert n_runs(engine) == before
