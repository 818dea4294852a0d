"""The model zoo and gnomon.core.models helpers: real Keras models on the shipped MNIST sample."""

from __future__ import annotations

import numpy as np
import pytest

from gnomon.core import models as M

BUILTIN = ("le_net", "shallow_net", "alex_net", "resnet50", "vgg16")


@pytest.fixture(scope="module")
def engine():
    from gnomon.core.engine import Engine
    from gnomon.core.plugins import load_plugins

    return Engine(load_plugins(environ={}, entry_points=[]), show_progress=False)


@pytest.fixture(scope="module")
def sample(mnist_sample_arrays):
    x, y = mnist_sample_arrays["training"]
    return (x[:8, :, :, None].astype(np.float32) / 255.0), y[:8].astype(np.int64)


def test_all_builtin_architectures_registered(engine):
    assert set(BUILTIN) <= set(engine.registry.names("model"))


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a == "resnet50" else a for a in BUILTIN])
def test_each_architecture_trains_one_step_on_mnist(engine, sample, arch):
    """Built at MNIST size (28x28x1), one optimiser step on 8 real MNIST images changes the weights."""
    x, y = sample
    model = M.build_model(engine, arch, (28, 28, 1), 10)
    assert M.input_shape_of(model) == (28, 28, 1)
    assert M.n_outputs(model) == 10
    M.compile_model(model, "sgd", 0.01)
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch(x, M.one_hot(y, 10), return_dict=True)
    assert np.isfinite(logs["loss"])
    after = model.get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    probs = M.predict(model, x, 8)
    assert probs.shape == (8, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("arch", ["le_net", "shallow_net", "alex_net", "vgg16"])
def test_rgb_and_large_inputs_build(engine, arch):
    model = M.build_model(engine, arch, (40, 36, 3), 4)
    out = model(np.zeros((2, 40, 36, 3), np.float32))
    assert tuple(out.shape) == (2, 4)


def test_le_net_and_shallow_net_match_dioptra_layout(engine):
    le = [(r["type"], r["output_shape"]) for r in M.layer_table(M.build_model(engine, "le_net", (28, 28, 1), 10))]
    assert [t for t, _ in le] == ["Conv2D", "Conv2D", "MaxPooling2D", "Dropout", "Flatten", "Dense", "Dropout", "Dense"]
    assert le[0][1] == (None, 26, 26, 32) and le[1][1] == (None, 24, 24, 64) and le[5][1] == (None, 128)
    shallow = M.layer_table(M.build_model(engine, "shallow_net", (28, 28, 1), 10))
    assert [r["type"] for r in shallow] == ["Flatten", "Dense", "Dense"]
    assert shallow[1]["output_shape"] == (None, 32)


def test_alex_net_resizes_small_inputs_inside_the_model(engine):
    rows = M.layer_table(M.build_model(engine, "alex_net", (28, 28, 1), 10))
    assert rows[0]["type"] == "Resizing" and rows[0]["output_shape"] == (None, 64, 64, 1)
    big = M.layer_table(M.build_model(engine, "alex_net", (96, 96, 3), 10))
    assert big[0]["type"] == "Conv2D"  # no adapter when not needed


def test_docs_layer_tables_match_the_real_models(engine):
    """docs/models.md lists each builtin model's layers at 28x28x1: index, name and type must be right."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    for arch in ("le_net", "shallow_net", "alex_net", "vgg16"):
        section = text.split(f"### {arch}", 1)[1].split("###", 1)[0]
        documented = re.findall(r"^\|\s*(\d+)\s*\|\s*`?(\w+)`?\s*\|\s*(\w+)\s*\|", section, re.M)
        real = [(str(r["index"]), r["name"], r["type"])
                for r in M.layer_table(M.build_model(engine, arch, (28, 28, 1), 10))]
        assert documented == real, arch


def test_fractional_epochs_stop_after_the_right_number_of_batches(engine, sample):
    """epochs=2.5 with 4 batches per epoch runs 4 + 4 + 2 batches, logging one entry per epoch."""
    from gnomon.core.context import RunContext

    x = np.repeat(sample[0], 2, axis=0)  # 16 images, batch 4 -> 4 steps per epoch
    y = M.one_hot(np.repeat(sample[1], 2), 10)
    model = M.compile_model(M.build_model(engine, "shallow_net", (28, 28, 1), 10))
    ctx = RunContext(task="t", run_id=None, params={}, seed=0, engine=engine, show_progress=False)
    advanced = []
    assert M.total_steps(2.5, 4) == 10 and M.epochs_to_run(2.5) == 3
    cb = M.training_callback(ctx, advanced.append, epochs=2.5, steps_per_epoch=4)
    model.fit(x, y, batch_size=4, epochs=M.epochs_to_run(2.5), callbacks=[cb], verbose=0)
    assert cb.steps == 10 == len(advanced)
    assert cb.epochs_logged == [1, 2, 3]
    ctx.cleanup()


def _constant_model(n_classes: int, winner: int):
    """A real Keras model that always predicts ``winner`` (zero kernel, biased output)."""
    import keras

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(n_classes, activation="softmax")])
    kernel, bias = model.layers[-1].get_weights()
    bias[:] = 0.0
    bias[winner] = 5.0
    model.layers[-1].set_weights([np.zeros_like(kernel), bias])
    return model


def test_evaluate_reports_attack_success_rate_on_triggered_samples(sample):
    from gnomon.core.datasets import ImageDataset

    x, y = sample
    y = np.array([0, 1, 2, 3, 3, 1, 0, 2])
    triggered = [0, 1, 2, 3]  # true classes 0, 1, 2, 3; target 3 -> three count for ASR
    ds = ImageDataset(x, y, [str(i) for i in range(10)],
                      metadata={"target_class": 3, "poisoned_indices": triggered})
    metrics = M.evaluate(_constant_model(10, 3), ds, batch_size=4)
    assert metrics["attack_success_rate"] == 1.0
    assert metrics["n_triggered"] == 4
    assert metrics["accuracy"] == pytest.approx(2 / 8)
    metrics = M.evaluate(_constant_model(10, 1), ds, batch_size=4)
    assert metrics["attack_success_rate"] == 0.0
    assert metrics["accuracy_clean"] == pytest.approx(1 / 4)  # samples 4..7 = 3, 1, 0, 2
    clean = M.evaluate(_constant_model(10, 1), ds.replace(metadata={}), batch_size=4)
    assert "attack_success_rate" not in clean
    for key in M.METRIC_NAMES:
        assert np.isfinite(clean[key])


def test_evaluate_adapts_images_to_the_model_input(engine, sample):
    from gnomon.core.datasets import ImageDataset

    x, y = sample
    model = M.build_model(engine, "shallow_net", (32, 32, 3), 10)
    metrics = M.evaluate(model, ImageDataset(x, y, [str(i) for i in range(10)]), batch_size=8)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n_samples"] == 8


def test_registered_model_names_and_refs():
    assert M.registered_model_name("exp", "le_net", "") == "exp_le_net"
    assert M.registered_model_name("exp", "le_net", "poisoned") == "exp_poisoned_le_net"
    assert M.parse_model_ref("exp_le_net") == ("exp_le_net", None)
    assert M.parse_model_ref("exp_le_net/3") == ("exp_le_net", "3")
    assert M.parse_model_ref("exp_le_net/latest") == ("exp_le_net", None)
    with pytest.raises(M.ModelNotFoundError):
        M.parse_model_ref("exp_le_net/x")


def test_unknown_optimizer_is_a_clear_error():
    from gnomon.core.errors import GnomonError

    with pytest.raises(GnomonError, match="optimizer 'nadamax'"):
        M.make_optimizer("nadamax", 0.1)


def test_models_cli_lists_and_shows_the_layer_table(gnomon_home):
    import json

    from typer.testing import CliRunner

    from gnomon.cli import state
    from gnomon.cli.main import build_app

    state.reset()
    runner = CliRunner()
    app = build_app()
    listed = runner.invoke(app, ["models", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert set(BUILTIN) <= {m["name"] for m in json.loads(listed.stdout)}
    shown = runner.invoke(app, ["models", "show", "le_net", "--json"])
    assert shown.exit_code == 0, shown.output
    table = json.loads(shown.stdout)
    assert [r["index"] for r in table["layers"]] == list(range(8))
    assert table["layers"][6]["type"] == "Dropout" and table["params"] == 1_199_882
    rgb = json.loads(runner.invoke(app, ["models", "show", "le_net", "--input-shape", "32,32,3", "--json"]).stdout)
    assert rgb["layers"][0]["output_shape"] == [None, 30, 30, 32]
    bad = runner.invoke(app, ["models", "show", "le_net", "--input-shape", "32,32"])
    assert bad.exit_code == 2
    missing = runner.invoke(app, ["models", "show", "le_nett"])
    assert missing.exit_code == 2 and "le_net" in missing.output
    state.reset()
