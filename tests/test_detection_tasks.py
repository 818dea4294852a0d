"""The backdoor detection tasks run for real (ART, Keras, MLflow store) on the shipped MNIST sample.

One module-scoped store holds what the baseline demo makes, at sample size: a training set 8%
of which carries ART's pattern trigger relabelled to class 1 (gen_poison_test_data
label_type=train), le_net trained on it, and the triggered test set (label_type=test).
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from gnomon.core.errors import ParamValidationError

TARGET = 1


@pytest.fixture(scope="module")
def store(tmp_path_factory, mnist_sample_dirs):
    from gnomon.core.engine import Engine

    home = tmp_path_factory.mktemp("detection-store")
    uri = f"sqlite:///{home / 'mlflow.db'}"

    def engine():
        return Engine(tracking_uri=uri, experiment="detect", show_progress=False)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GNOMON_HOME", str(home))
        common = {"target_class": TARGET, "trigger": "pattern", "seed": 0}
        train_set = engine().run("gen_poison_test_data", dict(
            common, label_type="train", poison_fraction=0.08, data_dir=str(mnist_sample_dirs["training"]),
            output_tar_name="training_poisoned.tar", output_dataset_name="poisoned_training"))
        test_set = engine().run("gen_poison_test_data", dict(
            common, label_type="test", poison_fraction=1.0, data_dir=str(mnist_sample_dirs["testing"]),
            output_tar_name="testing_triggered.tar", output_dataset_name="triggered_testing"))
        model = engine().run("train", {
            "model_architecture": "le_net", "model_tag": "poisoned", "epochs": 6, "batch_size": 32,
            "register_model": True, "load_dataset_from_mlruns": True, "training_dataset_run_id": train_set.run_id,
            "dataset_tar_name": "training_poisoned.tar", "dataset_name": "poisoned_training",
            "data_dir_test": str(mnist_sample_dirs["testing"]), "validation_split": 0.0, "seed": 0})
    return types.SimpleNamespace(engine=engine, home=home, dirs=mnist_sample_dirs, train_run=train_set.run_id,
                                 test_run=test_set.run_id, model=f"{model.outputs['model_name']}/1")


def _train_source(store):
    return {"model": store.model, "load_dataset_from_mlruns": True, "dataset_run_id": store.train_run,
            "dataset_tar_name": "training_poisoned.tar", "dataset_name": "poisoned_training"}


def _flagged_rates(store, result):
    from gnomon.core.datasets import read_dataset_artifact

    source = read_dataset_artifact(store.engine(), store.train_run, "training_poisoned.tar", "poisoned_training")
    cleaned = read_dataset_artifact(store.engine(), result.run_id, result.outputs["dataset_tar_name"],
                                    result.outputs["dataset_name"])
    kept = set(cleaned.files)
    removed = np.array([f not in kept for f in source.files])
    poisoned = source.poisoned_mask()
    return removed[poisoned].mean(), removed[~poisoned].mean(), cleaned, source


@pytest.mark.parametrize("task, params", [
    ("activation_clustering", {"cluster_analysis": "smaller"}),
    ("spectral_signatures", {"expected_pp_poison": 0.1}),
])
def test_detectors_flag_poison_more_than_clean(store, monkeypatch, task, params):
    monkeypatch.setenv("GNOMON_HOME", str(store.home))
    result = store.engine().run(task, dict(_train_source(store), **params))
    rate_poisoned, rate_clean, cleaned, source = _flagged_rates(store, result)
    assert rate_poisoned > rate_clean + 0.2, (rate_poisoned, rate_clean)
    # the metrics are the ones the cleaned artifact implies
    assert result.metrics["n_flagged"] == len(source) - len(cleaned)
    assert result.metrics["recall"] == pytest.approx(rate_poisoned)
    # what is left of the poison is still marked, so retraining on it measures it
    assert cleaned.poisoned_mask().sum() == round((1 - rate_poisoned) * source.poisoned_mask().sum())
    assert cleaned.metadata["defenses"][-1]["name"] == task
    client = store.engine().mlflow_client()
    names = {a.path for a in client.list_artifacts(result.run_id, "detection")}
    assert {"detection/flagged.json", "detection/per_class.json", "detection/projection.png"} <= names


def test_exclusionary_reclassification_clears_clean_clusters(store, monkeypatch):
    """'smaller' flags a cluster in every class; ART's exclusionary reclassification clears the clean ones."""
    monkeypatch.setenv("GNOMON_HOME", str(store.home))
    plain = store.engine().run("activation_clustering", dict(_train_source(store), cluster_analysis="smaller"))
    exre = store.engine().run("activation_clustering", dict(_train_source(store), cluster_analysis="smaller",
                                                            ex_re_threshold=1.0, ex_re_epochs=3))
    assert exre.metrics["n_flagged"] < plain.metrics["n_flagged"] / 2, (exre.metrics, plain.metrics)
    assert exre.metrics["precision"] > plain.metrics["precision"] + 0.2
    assert exre.metrics["recall"] >= plain.metrics["recall"] - 0.1, (exre.metrics, plain.metrics)


def test_detector_examines_only_the_classes_asked(store, monkeypatch):
    monkeypatch.setenv("GNOMON_HOME", str(store.home))
    result = store.engine().run("spectral_signatures", dict(_train_source(store), classes="1",
                                                            expected_pp_poison=0.4))
    _, _, cleaned, source = _flagged_rates(store, result)
    removed = set(source.files) - set(cleaned.files)
    assert removed and all(source.y[source.files.index(f)] == TARGET for f in removed)


def test_strip_entropy_separates_triggered_from_clean(store, monkeypatch):
    monkeypatch.setenv("GNOMON_HOME", str(store.home))
    result = store.engine().run("strip", {
        "model": store.model, "load_dataset_from_mlruns": True, "dataset_run_id": store.test_run,
        "dataset_tar_name": "testing_triggered.tar", "dataset_name": "triggered_testing",
        "clean_data_dir": str(store.dirs["testing"]), "reference_data_dir": str(store.dirs["training"]),
        "n_reference": 200, "num_samples": 10, "false_acceptance_rate": 0.05})
    m = result.metrics
    assert m["roc_auc"] > 0.8
    assert m["detection_rate"] > m["false_alarm_rate"] + 0.3
    assert m["attack_success_rate_abstain"] < m["attack_success_rate"]


def test_strip_entropies_are_arts(store):
    """The batched scorer gives ART's STRIP decisions: same draws, same entropy, same abstentions."""
    from art.defences.transformer.poisoning import STRIP

    from gnomon.core.datasets import resolve_dataset
    from gnomon.core.models import load_registered_model, predict
    from gnomon.plugins.builtin.detection_art import art_classifier, strip_entropies

    model = load_registered_model(store.engine(), store.model)
    x = resolve_dataset(store.engine(), {"data_dir": str(store.dirs["testing"])}).x[:40]
    x_val = x[:20]
    np.random.seed(5)
    defended = STRIP(art_classifier(model))(num_samples=6, false_acceptance_rate=0.2)
    defended.mitigate(x_val)
    art_preds = defended.predict(x[20:])
    np.random.seed(5)
    val_h = strip_entropies(lambda a: predict(model, a), x_val, x_val, num_samples=6, chunk=7)
    from gnomon.plugins.builtin.detection_art import strip_threshold

    assert strip_threshold(val_h, 0.2) == pytest.approx(defended.entropy_threshold, rel=1e-5)
    ours = strip_entropies(lambda a: predict(model, a), x[20:], x_val, num_samples=6, chunk=7)
    assert np.array_equal(ours <= defended.entropy_threshold, ~np.any(art_preds, axis=1))


def test_neural_cleanse_mask_is_smallest_for_target(store, monkeypatch):
    monkeypatch.setenv("GNOMON_HOME", str(store.home))
    result = store.engine().run("neural_cleanse", {
        "model": store.model, "data_dir": str(store.dirs["training"]), "n_validation": 300, "steps": 6,
        "mitigation": "unlearning", "test_data_dir": str(store.dirs["testing"]),
        "triggered_run_id": store.test_run, "triggered_tar_name": "testing_triggered.tar",
        "triggered_dataset_name": "triggered_testing"})
    m = result.metrics
    norms = [m[f"mask_l1_class_{c}"] for c in range(10)]
    assert norms[TARGET] < np.median(norms)
    assert int(np.argmin(norms)) == TARGET
    assert "repaired_accuracy" in m and result.outputs.get("model_name")


def test_neural_cleanse_unlearns_on_its_own_larger_sample(store, monkeypatch):
    """n_mitigation: the search uses n_validation images, the unlearning its own sample of n_mitigation."""
    from gnomon.plugins.builtin import detection_art

    real = detection_art.outlier_detection

    def target_flagged(*args, **kwargs):  # one search step flags nothing reliably: flag the target as the full run does
        masks, patterns, norms, anomaly, _ = real(*args, **kwargs)
        return masks, patterns, norms, anomaly, [TARGET]

    monkeypatch.setattr(detection_art, "outlier_detection", target_flagged)
    monkeypatch.setenv("GNOMON_HOME", str(store.home))
    common = {"model": store.model, "data_dir": str(store.dirs["training"]), "n_validation": 60, "steps": 1,
              "nc_batch_size": 20, "mitigation": "unlearning", "unlearning_data": "paper",
              "test_data_dir": str(store.dirs["testing"])}
    plain = store.engine().run("neural_cleanse", common).metrics
    larger = store.engine().run("neural_cleanse", dict(common, n_mitigation=400)).metrics
    # the same search (the unlearning sample is drawn after it) ...
    assert [larger[f"mask_l1_class_{c}"] for c in range(10)] == [plain[f"mask_l1_class_{c}"] for c in range(10)]
    # ... then ART unlearns on every image of the sample it was given (paper: all of them, 20% stamped)
    assert plain["n_mitigation"] == plain["n_mitigation_examples"] == 60
    assert larger["n_mitigation"] == larger["n_mitigation_examples"] == 400


@pytest.mark.parametrize("task, params, field", [
    ("activation_clustering", {"nb_clusters": 0}, "nb_clusters"),
    ("activation_clustering", {"layer": 99}, "layer"),
    ("activation_clustering", {"cluster_analysis": "distance", "nb_clusters": 3}, "nb_clusters"),
    ("activation_clustering", {"classes": "one"}, "classes"),
    ("activation_clustering", {"ex_re_threshold": 0}, "ex_re_threshold"),
    ("activation_clustering", {"cluster_analysis": "silhouette-scores", "ex_re_threshold": 1}, "ex_re_threshold"),
    ("spectral_signatures", {"expected_pp_poison": 0}, "expected_pp_poison"),
    ("spectral_signatures", {"classes": "12"}, "classes"),
    ("strip", {"num_samples": 1}, "num_samples"),
    ("neural_cleanse", {"mitigation": "retraining"}, "mitigation"),
    ("neural_cleanse", {"norm": 3}, "norm"),
    ("neural_cleanse", {"n_mitigation": 500}, "n_mitigation"),
    ("neural_cleanse", {"n_mitigation": 5, "mitigation": "unlearning"}, "n_mitigation"),
])
def test_bad_params_refused_before_any_run(store, monkeypatch, task, params, field):
    monkeypatch.setenv("GNOMON_HOME", str(store.home))
    engine = store.engine()
    client = engine.mlflow_client()
    before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    with pytest.raises(ParamValidationError) as info:
        engine.run(task, dict(_train_source(store), **params))
    assert field in str(info.value)
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == before


def test_classes_accepts_a_resumed_steps_number():
    """A resumed workflow hands neural_cleanse's flagged_classes "1" back as the number 1."""
    from gnomon.plugins.builtin.detection_tasks import SpectralSignaturesSchema

    assert SpectralSignaturesSchema().load({"model": "m", "classes": 1})["classes"] == "1"
    assert SpectralSignaturesSchema().load({"model": "m", "classes": "1,7"})["classes"] == "1,7"
    from marshmallow import ValidationError

    with pytest.raises(ValidationError):
        SpectralSignaturesSchema().load({"model": "m", "classes": True})


def test_pruning_needs_a_dense_layer_where_art_prunes():
    """ART prunes the layer before the output: refused when it is not a Dense layer, accepted for shallow_net."""
    import keras
    from keras import layers

    from gnomon.plugins.builtin.detection_tasks import pruning_layer_problem
    from gnomon.plugins.builtin.models import shallow_net

    pooled = keras.Sequential([keras.Input(shape=(28, 28, 1)), layers.Conv2D(4, 3, name="conv"),
                               layers.GlobalAveragePooling2D(name="pool"),
                               layers.Dense(10, activation="softmax", name="predictions")])
    reason = pruning_layer_problem(pooled)
    assert reason is not None and "Dense" in reason and "'pool'" in reason
    assert pruning_layer_problem(shallow_net((28, 28, 1), 10)) is None


class _FakeCleanse:
    """The state ART's trigger search reads, with a 'train' step whose trigger always succeeds."""

    def __init__(self, steps):
        import tensorflow as tf

        self.steps, self.batch_size, self.patience = steps, 10, 2
        self.attack_success_threshold, self.early_stop, self.early_stop_threshold = 0.99, True, 0.99
        self.early_stop_patience, self.init_cost, self.cost = 3, 1e-3, 1e-3
        self.cost_multiplier_up, self.cost_multiplier_down = 1.5, 1.5 ** 1.5
        self.cost_tensor = tf.Variable(self.cost)
        self.mask_tensor_raw = tf.Variable(np.zeros((4, 4, 1), np.float32))
        self.pattern_tensor_raw = tf.Variable(np.zeros((4, 4, 1), np.float32))
        self.mask_tensor = self.pattern_tensor = self.mask_tensor_raw
        self.costs, self.starts, self.ends, self.n_steps, self.fresh = [], [], [], 0, False

    def reset(self):
        self.cost = self.init_cost
        self.cost_tensor.assign(self.cost)
        self.fresh = True
        if self.n_steps:
            self.ends.append(float(self.mask_tensor_raw.numpy().sum()))

    def train(self, x_batch, y_batch):
        import tensorflow as tf

        if self.fresh:
            self.starts.append(float(self.mask_tensor_raw.numpy().sum()))
            self.fresh = False
        self.n_steps += 1
        cost = float(self.cost_tensor.numpy())
        self.costs.append(cost)
        self.mask_tensor_raw.assign_add(tf.ones_like(self.mask_tensor_raw))
        reg = 10.0 if self.n_steps < 4 else 5.0  # improves once, then plateaus
        succeeds = cost < 4e-3  # a heavy enough mask penalty defeats the trigger
        return tf.constant(0.0), tf.constant([reg]), tf.constant(0.0), tf.constant([1.0 if succeeds else 0.0])


def test_paper_search_raises_the_cost_and_stops_early_where_arts_cannot():
    """ART 1.20 resets the cost at every successful step (the reference only while it is 0); with the
    reference's rule the cost rises, early stopping ends the search, and each class starts afresh."""
    from art.estimators.poison_mitigation.neural_cleanse.keras import KerasNeuralCleanse

    from gnomon.plugins.builtin.detection_art import paper_search

    x, y = np.zeros((50, 4, 4, 1), np.float32), np.eye(2)[np.zeros(50, int)]
    art = _FakeCleanse(steps=30)
    for target in np.eye(2):
        KerasNeuralCleanse.generate_backdoor(art, x, y, target)
    assert max(art.costs) == pytest.approx(art.init_cost)  # ART never raises it
    assert art.n_steps == 2 * 30 * 5  # nor stops early
    assert art.starts[1] == art.ends[0]  # the second class starts where the first ended

    paper = _FakeCleanse(steps=30)
    search = paper_search(paper, np.random.default_rng(0))
    for target in np.eye(2):
        search(x, y, target)
    assert max(paper.costs) > 2 * paper.init_cost
    assert paper.n_steps < 2 * 30 * 5
    assert paper.starts[1] != paper.ends[0]
