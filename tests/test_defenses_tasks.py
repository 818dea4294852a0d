"""The three defense tasks, run for real (ART, Keras, MLflow store) on the shipped MNIST sample.

A module-scoped store holds a tiny CNN backdoored on the sample (10% of the training images carry
ART's pattern trigger and are relabelled 1) and a triggered copy of the test sample as a dataset
artifact, the way gen_poison_test_data makes one.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import TaskSchema
from gnomon.core.tasks import Task

TARGET = 1


def _backdoor_setup(ctx, dirs):
    """Test-only task: register a backdoored tiny model and log a triggered test set."""
    import keras
    from art.attacks.poisoning.perturbations import add_pattern_bd

    from gnomon.core.datasets import resolve_dataset, write_dataset_artifact
    from gnomon.core.models import compile_model, log_and_register

    ctx.seed_tensorflow()
    train = resolve_dataset(ctx, {"data_dir": str(dirs["training"])})
    test = resolve_dataset(ctx, {"data_dir": str(dirs["testing"])})

    def trigger(ds, idx):
        x = ds.x.copy()
        x[idx] = add_pattern_bd(x[idx][..., 0], pixel_value=1.0)[..., None]
        return x

    rng = ctx.rng
    poison = rng.choice(np.flatnonzero(train.y != TARGET), size=len(train) // 10, replace=False)
    x_train, y_train = trigger(train, poison), train.y.copy()
    y_train[poison] = TARGET
    model = keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPool2D(),
        keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    compile_model(model, "adam", 0.003)
    model.fit(x_train, keras.utils.to_categorical(y_train, 10), epochs=8, batch_size=32, verbose=0)
    log_and_register(ctx, model, "tiny_backdoored", True, architecture="le_net", class_names=train.class_names)

    triggered = np.flatnonzero(test.y != TARGET)[::2]
    metadata = dict(test.metadata, target_class=TARGET, trigger="pattern", label_type="test",
                    poisoned_indices=triggered.tolist())
    write_dataset_artifact(ctx, test.replace(x=trigger(test, triggered), metadata=metadata),
                           "adversarial_poison.tar.gz", "adv_poison_data")


class _NoParams(TaskSchema):
    pass


def _helper_plugin(dirs):
    module = types.ModuleType("defense_test_helpers")

    def fn(ctx, seed):
        return _backdoor_setup(ctx, dirs)

    @hookimpl
    def register_tasks(register):
        register(Task("backdoor_setup", "test helper", _NoParams, fn))

    module.register_tasks = register_tasks
    return module


@pytest.fixture(scope="module")
def store(tmp_path_factory, mnist_sample_dirs):
    """``make_engine()`` bound to one store holding the backdoored model and the triggered test set."""
    from gnomon.core.engine import Engine
    from gnomon.core.plugins import PluginInfo, _register, load_plugins

    home = tmp_path_factory.mktemp("defense-store")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    helper = _helper_plugin(mnist_sample_dirs)

    def make_engine():
        plugins = load_plugins(environ={}, entry_points=[])
        _register(plugins, PluginInfo(name="defense_test_helpers", source="test", module=helper.__name__),
                  lambda: helper)
        return Engine(plugins, tracking_uri=uri, experiment="defenses", show_progress=False)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GNOMON_HOME", str(home))
        setup = make_engine().run("backdoor_setup", {"seed": 3})
    return types.SimpleNamespace(make_engine=make_engine, setup_run=setup.run_id, uri=uri, home=home,
                                 test_dir=mnist_sample_dirs["testing"])


def _run(store, task, **params):
    params.setdefault("model", "tiny_backdoored")
    if "data_dir" not in params:
        params.update(load_dataset_from_mlruns=True, dataset_run_id=store.setup_run)
    return store.make_engine().run(task, params)


def _read(store, result):
    from gnomon.core.datasets import read_dataset_artifact

    return read_dataset_artifact(store.make_engine(), result.run_id, result.outputs["dataset_tar_name"],
                                 result.outputs["dataset_name"])


def _source(store):
    from gnomon.core.datasets import read_dataset_artifact

    return read_dataset_artifact(store.make_engine(), store.setup_run, "adversarial_poison.tar.gz", "adv_poison_data")


def test_spatial_smoothing_removes_trigger_and_keeps_metadata(store):
    from scipy.ndimage import median_filter

    src = _source(store)
    undefended = _run(store, "spatial_smoothing", spatial_smoothing_window_size=1)  # 1x1 median: identity
    result = _run(store, "spatial_smoothing", spatial_smoothing_window_size=3)
    out = _read(store, result)

    mask = src.poisoned_mask()
    assert mask.sum() > 50 and np.array_equal(out.poisoned_mask(), mask)
    # ART's pattern trigger: the bottom-right 4x4 corner; the median filter erases it.
    corner = (slice(None), slice(-5, -1), slice(-5, -1), 0)
    before, after = src.x[corner][mask], out.x[corner][mask]
    assert before.max() == 1.0 and np.abs(after - before).mean() > 0.2
    # Exactly a 3x3 median (reflect borders) per image, as an independent reference computes it.
    expected = median_filter(src.x, size=(1, 3, 3, 1), mode="reflect")
    np.testing.assert_allclose(out.x, np.rint(expected * 255) / 255, atol=1e-6)
    # The source metadata survives and the defense is recorded.
    assert out.metadata["target_class"] == TARGET and out.metadata["trigger"] == "pattern"
    assert [d["name"] for d in out.metadata["defenses"]] == ["spatial_smoothing"]
    assert out.metadata["defenses"][0]["options"]["window_size"] == 3
    # The trigger works on the undefended data and the smoothing defeats it.
    assert undefended.metrics["attack_success_rate"] >= 0.5
    assert result.metrics["attack_success_rate"] < undefended.metrics["attack_success_rate"] / 2
    assert 0 < result.metrics["accuracy"] <= 1 and result.metrics["l2_mean"] > 0


def test_without_a_model_only_the_defended_set_is_written_and_infer_on_it_gives_the_same_figures(store):
    """What the demo workflows do: the transform uses no model (so a sweep shares it) and ``infer`` evaluates."""
    with_model = _run(store, "gaussian_augmentation", gaussian_augmentation_sigma=0.3, seed=5)
    alone = store.make_engine().run("gaussian_augmentation", {
        "gaussian_augmentation_sigma": 0.3, "seed": 5, "load_dataset_from_mlruns": True,
        "dataset_run_id": store.setup_run})
    assert alone.params["model"] is None
    assert "accuracy" not in alone.metrics and "time_model_load_s" not in alone.metrics
    assert alone.metrics["l2_mean"] == with_model.metrics["l2_mean"] and alone.metrics["n_defended"] > 0
    np.testing.assert_array_equal(_read(store, alone).x, _read(store, with_model).x)
    inferred = store.make_engine().run("infer", {
        "model": "tiny_backdoored", "run_id": alone.run_id, "dataset_tar_name": alone.outputs["dataset_tar_name"],
        "dataset_name": alone.outputs["dataset_name"], "batch_size": 32})
    for key in ("accuracy", "attack_success_rate", "loss", "n_triggered"):
        assert inferred.metrics[key] == pytest.approx(with_model.metrics[key], abs=1e-6), key


def test_jpeg_changes_images_and_keeps_value_range(store):
    src = _source(store)
    result = _run(store, "jpeg_compression", jpeg_compression_quality=10)
    out = _read(store, result)
    diff = np.abs(out.x - src.x)
    assert diff.mean() > 0.01 and (diff.reshape(len(diff), -1).max(axis=1) > 0).all()
    assert out.x.min() >= 0.0 and out.x.max() <= 1.0 and out.x.max() > 0.9  # still [0, 1], not [0, 1/255]
    assert abs(float(out.x.mean()) - float(src.x.mean())) < 0.02
    assert "attack_success_rate" in result.metrics and result.metrics["linf_max"] > 0
    # channels_first only changes the layout handed to ART, not the result.
    flipped = _read(store, _run(store, "jpeg_compression", jpeg_compression_quality=10,
                                jpeg_compression_channels_first=True))
    np.testing.assert_array_equal(flipped.x, out.x)
    # Higher quality stays closer to the input.
    fine = _read(store, _run(store, "jpeg_compression", jpeg_compression_quality=90))
    assert np.abs(fine.x - src.x).mean() < diff.mean()


def test_jpeg_on_rgb_folder(store, tmp_path):
    from PIL import Image

    from gnomon.core.datasets import load_image_folder

    gray = load_image_folder(store.test_dir)
    for i, (img, label) in enumerate(zip(gray.x[:40], gray.y[:40], strict=True)):
        folder = tmp_path / "rgb" / gray.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        rgb = np.concatenate([img, img * 0.5, 1 - img], axis=-1)  # three different channels
        Image.fromarray(np.rint(rgb * 255).astype(np.uint8), "RGB").save(folder / f"{i}.png")
    result = _run(store, "jpeg_compression", data_dir=str(tmp_path / "rgb"), jpeg_compression_quality=20)
    out = _read(store, result)
    src = load_image_folder(tmp_path / "rgb")
    assert out.x.shape == src.x.shape and out.x.shape[-1] == 3
    assert np.abs(out.x - src.x).mean() > 0.005 and out.x.min() >= 0 and out.x.max() <= 1
    assert result.metrics["n_samples"] == 40


def test_gaussian_noise_has_requested_sigma_and_follows_seed(store):
    src = _source(store)
    sigma = 0.05
    result = _run(store, "gaussian_augmentation", gaussian_augmentation_sigma=sigma, seed=7)
    out = _read(store, result)
    assert len(out) == len(src)
    diff = (out.x - src.x).ravel()
    mid = ((src.x > 0.3) & (src.x < 0.7)).ravel()  # far from the clip limits: no clipping at 6 sigma
    assert mid.sum() > 2000
    assert abs(diff[mid].std() - sigma) < 0.1 * sigma and abs(diff[mid].mean()) < 0.005
    assert out.x.min() >= 0 and out.x.max() <= 1
    again = _read(store, _run(store, "gaussian_augmentation", gaussian_augmentation_sigma=sigma, seed=7))
    other = _read(store, _run(store, "gaussian_augmentation", gaussian_augmentation_sigma=sigma, seed=8))
    np.testing.assert_array_equal(again.x, out.x)
    assert not np.array_equal(other.x, out.x)


def test_gaussian_augmentation_appends_noisy_copies(store):
    src = _source(store)
    result = _run(store, "gaussian_augmentation", gaussian_augmentation_sigma=0.1,
                  gaussian_augmentation_perform_data_augmentation=True, gaussian_augmentation_ratio=0.5,
                  gaussian_augmentation_apply_fit=True, gaussian_augmentation_apply_predict=False)
    out = _read(store, result)
    n = len(src)
    assert len(out) == n + n // 2 and result.metrics["n_samples"] == n + n // 2
    by_file = dict(zip(out.files, range(len(out)), strict=True))
    originals = np.array([by_file[f] for f in src.files])
    np.testing.assert_array_equal(out.x[originals], src.x)  # originals kept unchanged
    copies = [f for f in out.files if "_gauss" in f]
    assert len(copies) == n // 2
    # Each copy keeps its source's label and trigger mark.
    src_index = {f.rsplit(".", 1)[0]: i for i, f in enumerate(src.files)}
    src_mask, out_mask = src.poisoned_mask(), out.poisoned_mask()
    for f in copies:
        i = src_index[f.rsplit("_gauss", 1)[0]]
        assert out.y[by_file[f]] == src.y[i] and out_mask[by_file[f]] == src_mask[i]
    assert out_mask.sum() > src_mask.sum()


@pytest.mark.parametrize("task, params, field", [
    ("spatial_smoothing", {"spatial_smoothing_apply_fit": "false", "spatial_smoothing_apply_predict": "false"},
     "spatial_smoothing_apply_predict"),
    ("jpeg_compression", {"jpeg_compression_apply_predict": "false"}, "jpeg_compression_apply_predict"),
    ("jpeg_compression", {"jpeg_compression_quality": "101"}, "jpeg_compression_quality"),
    ("gaussian_augmentation", {"gaussian_augmentation_perform_data_augmentation": "true"},
     "gaussian_augmentation_apply_predict"),
    ("gaussian_augmentation", {"gaussian_augmentation_perform_data_augmentation": "true",
                               "gaussian_augmentation_apply_fit": "true"}, "gaussian_augmentation_apply_predict"),
    ("spatial_smoothing", {"spatial_smoothing_window_size": "0"}, "spatial_smoothing_window_size"),
])
def test_bad_combinations_refused_before_any_run(gnomon_home, task, params, field):
    """Through the real CLI: exit code 2, the field named, and no MLflow run created."""
    from typer.testing import CliRunner

    from gnomon.cli import state
    from gnomon.cli.main import build_app

    state.reset()
    args = ["run", task, "-P", "model=whatever"] + [a for k, v in params.items() for a in ("-P", f"{k}={v}")]
    result = CliRunner().invoke(build_app(), args, catch_exceptions=False)
    state.reset()
    assert result.exit_code == 2, result.output
    assert field in result.output
    db = gnomon_home / "mlflow.db"
    if db.exists():
        import sqlite3

        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from runs").fetchone()[0] == 0


def test_unknown_model_refused_before_any_run(store):
    from gnomon.core.errors import ParamValidationError

    engine = store.make_engine()
    before = len(engine.mlflow_client().search_runs([engine.ensure_tracking()]))
    with pytest.raises(ParamValidationError) as info:
        _run(store, "spatial_smoothing", model="no_such_model")
    assert "model" in info.value.errors
    assert len(engine.mlflow_client().search_runs([engine.ensure_tracking()])) == before
