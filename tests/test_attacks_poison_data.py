"""gen_poison_test_data for real (ART PoisoningAttackBackdoor) on the shipped MNIST sample.

The poisoned artifact is compared against the original IDX images (mnist_sample_arrays),
matched through the file names the mnist_sample_dirs fixture gives them (``<label>/<i>.png``).
"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import pytest

from gnomon.core.errors import ParamValidationError

PATTERN = {(26, 26), (25, 25), (26, 24), (24, 26)}  # add_pattern_bd, distance 2, on 28x28


def run_poison(engine, data_dir, **params):
    params = {"data_dir": str(data_dir), **params}
    return engine.run("gen_poison_test_data", params)


def read_back(engine, result, tar="adversarial_poison.tar.gz", name="adv_poison_data"):
    from gnomon.core.datasets import read_dataset_artifact

    return read_dataset_artifact(engine, result.run_id, tar, name)


def original_index(file_name: str) -> int:
    return int(PurePosixPath(file_name).stem)


def n_runs(engine) -> int:
    import mlflow

    engine.ensure_tracking()
    experiment = mlflow.MlflowClient(engine.tracking_uri).get_experiment_by_name(engine.experiment)
    if experiment is None:
        return 0
    return len(mlflow.MlflowClient(engine.tracking_uri).search_runs([experiment.experiment_id]))


@pytest.mark.parametrize("label_type", ["test", "train"])
def test_poisoned_data_differs_exactly_at_the_trigger_of_the_chosen_samples(gnomon_engine, mnist_sample_dirs,
                                                                            mnist_sample_arrays, label_type):
    split = "testing" if label_type == "test" else "training"
    images, labels = mnist_sample_arrays[split]
    fraction, target = 0.1, 3
    result = run_poison(gnomon_engine, mnist_sample_dirs[split], poison_fraction=fraction, target_class=target,
                        label_type=label_type, seed=7)
    assert result.status == "FINISHED"
    data = read_back(gnomon_engine, result)
    n = len(images)
    assert len(data) == n
    poisoned = set(data.metadata["poisoned_files"])
    assert len(poisoned) == round(fraction * n) == result.metrics["n_poisoned"]
    assert data.metadata["target_class"] == target
    assert data.metadata["trigger"] == "pattern"
    assert data.metadata["label_type"] == label_type
    assert data.metadata["produced_by"]["run_id"] == result.run_id

    reference = images.astype(np.float32) / 255.0
    outside = np.ones((28, 28), bool)
    for r, c in PATTERN:
        outside[r, c] = False
    relabelled = 0
    for k, name in enumerate(data.files):
        i = original_index(name)
        x = data.x[k, ..., 0]
        if name in poisoned:
            np.testing.assert_array_equal(x[outside], reference[i][outside])
            assert all(x[r, c] == 1.0 for r, c in PATTERN)
            expected_label = target if label_type == "train" else int(labels[i])
            relabelled += int(labels[i]) != expected_label
        else:
            np.testing.assert_array_equal(x, reference[i])
            expected_label = int(labels[i])
        assert int(data.y[k]) == expected_label
        assert name.split("/")[0] == str(expected_label)
    if label_type == "train":
        assert relabelled == result.metrics["n_relabelled"] > 0
    else:
        assert result.metrics["n_relabelled"] == 0
    # the distance metrics describe the triggered images: 4 pixels raised to 1
    changes = [reference[original_index(f)] for f in poisoned]
    l2 = [np.sqrt(sum((1.0 - float(img[r, c])) ** 2 for r, c in PATTERN)) for img in changes]
    assert result.metrics["l2_mean"] == pytest.approx(np.mean(l2), abs=1e-6)
    assert result.metrics["linf_max"] == pytest.approx(max(max(1.0 - float(img[r, c]) for r, c in PATTERN)
                                                           for img in changes), abs=1e-6)


def test_same_seed_same_poisoned_files_other_seed_others(gnomon_engine, mnist_sample_dirs):
    runs = [run_poison(gnomon_engine, mnist_sample_dirs["testing"], poison_fraction=0.2, seed=s) for s in (1, 1, 2)]
    files = [sorted(read_back(gnomon_engine, r).metadata["poisoned_files"]) for r in runs]
    assert files[0] == files[1]
    assert files[0] != files[2]
    assert len(files[0]) == len(files[2]) == 60


def test_fraction_rounding_zero_and_all(gnomon_engine, mnist_sample_dirs):
    for fraction, expected in ((0.0, 0), (1 / 7, round(300 / 7)), (1.0, 300)):
        result = run_poison(gnomon_engine, mnist_sample_dirs["testing"], poison_fraction=fraction)
        assert result.metrics["n_poisoned"] == expected
        assert len(read_back(gnomon_engine, result).metadata["poisoned_files"]) == expected


def test_other_triggers_and_artifact_input(gnomon_engine, mnist_sample_dirs):
    first = run_poison(gnomon_engine, mnist_sample_dirs["testing"], poison_fraction=0.5, trigger="single_pixel",
                       trigger_options='{"distance": 4}', output_tar_name="step1.tar", output_dataset_name="step1")
    data1 = read_back(gnomon_engine, first, "step1.tar", "step1")
    assert data1.metadata["trigger"] == "single_pixel"
    assert data1.metadata["trigger_options"] == {"distance": 4, "pixel_value": 1.0}  # defaults recorded too
    # a second attack reads the first one's artifact (dataset source from another run)
    second = gnomon_engine.run("gen_poison_test_data", {
        "load_dataset_from_mlruns": True, "dataset_run_id": first.run_id, "dataset_tar_name": "step1.tar",
        "dataset_name": "step1", "poison_fraction": 0.1, "trigger": "image", "target_class": 0})
    data2 = read_back(gnomon_engine, second)
    assert len(data2) == 300 and len(data2.metadata["poisoned_files"]) == 30
    assert data2.metadata["target_class"] == 0 and data2.metadata["trigger"] == "image"
    assert data2.metadata["lineage"][0]["run_id"] == first.run_id
    by_name = {f: k for k, f in enumerate(data1.files)}
    for k, name in enumerate(data2.files):
        before = data1.x[by_name[name], ..., 0]
        after = data2.x[k, ..., 0]
        diff = np.argwhere(before != after)
        if name in data2.metadata["poisoned_files"]:
            assert len(diff) and diff.min() >= 19 and diff.max() <= 26  # bundled 8x8 picture, bottom right
        else:
            assert len(diff) == 0


@pytest.mark.parametrize("params, field", [
    ({"poison_fraction": 1.5}, "poison_fraction"),
    ({"poison_fraction": -0.1}, "poison_fraction"),
    ({"target_class": 10}, "target_class"),
    ({"label_type": "both"}, "label_type"),
    ({"trigger": "nope"}, "trigger"),
    ({"trigger_options": '{"distance": 30}'}, "trigger"),
    ({"trigger_options": "{not json"}, "trigger_options"),
    ({"load_dataset_from_mlruns": True, "dataset_run_id": "0123456789abcdef"}, "dataset_run_id"),
])
def test_bad_input_is_refused_before_any_run(gnomon_engine, mnist_sample_dirs, params, field):
    before = n_runs(gnomon_engine)
    with pytest.raises(ParamValidationError) as info:
        run_poison(gnomon_engine, mnist_sample_dirs["testing"], **params)
    assert field in info.value.errors, info.value.errors
    assert n_runs(gnomon_engine) == before


def test_dataset_of_the_wrong_shape_is_refused(gnomon_engine, tmp_path):
    from PIL import Image

    for label in ("0", "1"):
        (tmp_path / label).mkdir()
        Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / label / "a.png")
    with pytest.raises(ParamValidationError) as info:
        run_poison(gnomon_engine, tmp_path)
    assert "trigger" in info.value.errors and "3x3" in " ".join(info.value.errors["trigger"])
    assert n_runs(gnomon_engine) == 0


def stripe_trigger(rows: int = 1):
    """A plugin's trigger: the bottom ``rows`` rows set to 1."""

    def apply(x):
        out = np.array(x, copy=True)
        out[:, -rows:, :, :] = 1.0
        return out

    return apply


def make_stripe_plugin():
    import types

    from gnomon.core.hookspecs import hookimpl
    from gnomon.core.registry import AttackSpec

    module = types.ModuleType("stripe_plugin")

    @hookimpl
    def register_attacks(register):
        register(AttackSpec(name="stripe", kind="trigger", factory=stripe_trigger, summary="bottom rows white"))

    module.register_attacks = register_attacks
    return module


def test_a_plugin_trigger_is_accepted_and_applied(gnomon_engine_factory, mnist_sample_dirs, mnist_sample_arrays):
    engine = gnomon_engine_factory(plugins=[make_stripe_plugin()])
    assert "stripe" in engine.registry.names("attack", sub_kind="trigger")
    result = run_poison(engine, mnist_sample_dirs["testing"], poison_fraction=0.05, trigger="stripe",
                        trigger_options='{"rows": 2}')
    data = read_back(engine, result)
    images = mnist_sample_arrays["testing"][0].astype(np.float32) / 255.0
    poisoned = set(data.metadata["poisoned_files"])
    assert len(poisoned) == 15 and data.metadata["trigger"] == "stripe"
    assert data.metadata["trigger_options"] == {"rows": 2}
    for k, name in enumerate(data.files):
        x, ref = data.x[k, ..., 0], images[original_index(name)]
        if name in poisoned:
            assert np.all(x[-2:] == 1.0)
            np.testing.assert_array_equal(x[:-2], ref[:-2])
        else:
            np.testing.assert_array_equal(x, ref)
    with pytest.raises(ParamValidationError) as info:
        run_poison(engine, mnist_sample_dirs["testing"], trigger="stripe", trigger_options='{"cols": 2}')
    assert "accepts: rows" in " ".join(info.value.errors["trigger_options"])
