"""blended, sig and warp (plugins/builtin/literature_triggers.py) on real MNIST digits from the shipped sample.

Each trigger must change the images, keep them in [0, 1], give the same result under the same seed
(and a different one under another seed where it is seeded), follow its paper's formula, and refuse
bad options before any run exists.
"""

from __future__ import annotations

import numpy as np
import pytest

from gnomon.core.errors import ParamValidationError
from gnomon.plugins.builtin.literature_triggers import (
    bicubic_matrix,
    blended_trigger,
    grid_sample,
    sig_trigger,
    warp_field,
    warp_trigger,
)
from gnomon.plugins.builtin.triggers import BUNDLED_IMAGE, TriggerError

FACTORIES = {"blended": blended_trigger, "sig": sig_trigger, "warp": warp_trigger}
SEEDED = ("blended", "warp")


@pytest.fixture(scope="module")
def mnist_x(request):
    """50 real MNIST test digits as float32 NHWC in [0, 1]."""
    images = request.getfixturevalue("mnist_sample_arrays")["testing"][0][:50]
    return (images.astype(np.float32) / 255.0)[..., None]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_trigger_changes_images_keeps_range_and_input(mnist_x, name):
    before = mnist_x.copy()
    out = FACTORIES[name]()(mnist_x)
    np.testing.assert_array_equal(mnist_x, before)  # not modified in place
    assert out.shape == mnist_x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    changed = np.any(out != mnist_x, axis=(1, 2, 3))
    assert changed.all(), f"{name} left {np.sum(~changed)} images unchanged"
    # the change survives 8-bit storage (the dataset artifact), else poisoning could not work
    assert np.mean(np.abs(np.rint(out * 255) - np.rint(mnist_x * 255))) > 1.0
    nhw = FACTORIES[name]()(mnist_x[..., 0])
    np.testing.assert_array_equal(nhw, out[..., 0])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_same_seed_same_trigger_other_seed_other(mnist_x, name):
    first, again = FACTORIES[name]()(mnist_x), FACTORIES[name]()(mnist_x)
    np.testing.assert_array_equal(first, again)
    if name in SEEDED:
        assert np.abs(FACTORIES[name](seed=1)(mnist_x) - first).max() > 0.05


def test_blended_is_the_convex_blend_with_a_seeded_uniform_key(mnist_x):
    out = blended_trigger(alpha=0.3, seed=4)(mnist_x)
    key = np.random.default_rng(4).random((28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(out, 0.7 * mnist_x + 0.3 * key, atol=1e-6)
    assert 0.3 < key.mean() * 2 < 1.7  # a uniform [0, 1] pattern, not a constant
    rgb = blended_trigger(alpha=1.0)(np.repeat(mnist_x[:2], 3, axis=-1))
    assert rgb.shape == (2, 28, 28, 3) and not np.array_equal(rgb[..., 0], rgb[..., 1])


def test_blended_with_a_picture_blends_that_picture(mnist_x, tmp_path):
    from PIL import Image

    out = blended_trigger(path=str(BUNDLED_IMAGE), alpha=1.0)(mnist_x[:3])
    expected = np.asarray(Image.open(BUNDLED_IMAGE).convert("L").resize((28, 28), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(out[0, ..., 0], expected, atol=1e-6)
    np.testing.assert_array_equal(out[0], out[2])  # alpha 1: the picture alone, whatever the digit
    half = blended_trigger(path=str(BUNDLED_IMAGE), alpha=0.5)(mnist_x[:3])
    np.testing.assert_allclose(half, 0.5 * mnist_x[:3] + 0.5 * expected[None, ..., None], atol=1e-6)


def test_sig_is_barnis_horizontal_sinusoid(mnist_x):
    out = sig_trigger(amplitude=0.1, frequency=3)(mnist_x)
    signal = 0.1 * np.sin(2 * np.pi * np.arange(28) * 3 / 28)
    np.testing.assert_allclose(out[..., 0], np.clip(mnist_x[..., 0] + signal[None, None, :], 0, 1), atol=1e-6)
    grey = np.full((1, 28, 28, 1), 0.5, np.float32)
    wave = sig_trigger(amplitude=0.1, frequency=3)(grey)[0, :, :, 0]
    assert np.allclose(wave, wave[0:1, :])  # the same in every row
    assert wave.max() == pytest.approx(0.6, abs=2e-3) and wave.min() == pytest.approx(0.4, abs=2e-3)


def test_bicubic_matrix_matches_pytorch_align_corners_semantics():
    m = bicubic_matrix(4, 28)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)  # interpolation weights
    # align_corners=True: outputs 0, 9, 18, 27 sit exactly on the 4 control points
    for out_i, in_i in ((0, 0), (9, 1), (18, 2), (27, 3)):
        np.testing.assert_allclose(m[out_i], np.eye(4)[in_i], atol=1e-12)
    # Keys' cubic convolution (a = -0.75) halfway between interior nodes 1 and 2: (-3, 19, 19, -3) / 32
    mid = bicubic_matrix(4, 7)[3]
    np.testing.assert_allclose(mid, np.array([-3, 19, 19, -3]) / 32, atol=1e-12)


def test_warp_field_is_smooth_small_and_seeded():
    ident = np.stack(np.meshgrid(np.linspace(-1, 1, 28), np.linspace(-1, 1, 28)), axis=-1)
    field = warp_field(28, 28, 4, 0.5, seed=0)
    shift = (field - ident) * 27 / 2  # in pixels
    assert 0.05 < np.abs(shift).mean() < 0.5 and np.abs(shift).max() < 1.5
    # smooth: inside the border clamp, neighbours move alike, unlike a field with a control point per pixel
    rough = (warp_field(28, 28, 28, 0.5, seed=0) - ident) * 27 / 2
    inner = shift[2:-2, 2:-2]
    assert np.abs(np.diff(inner, axis=0)).max() < 0.4 * np.abs(np.diff(rough[2:-2, 2:-2], axis=0)).max()
    assert np.abs(np.diff(inner, axis=1)).max() < 0.4 * np.abs(np.diff(rough[2:-2, 2:-2], axis=1)).max()
    stronger = (warp_field(28, 28, 4, 1.0, seed=0) - ident) * 27 / 2
    interior = (slice(2, -2), slice(2, -2))  # away from the border clamp the field scales with strength
    np.testing.assert_allclose(stronger[interior], 2 * shift[interior], atol=1e-9)
    assert not np.allclose(warp_field(28, 28, 4, 0.5, seed=1), field)


def test_grid_sample_identity_and_whole_pixel_shift(mnist_x):
    ident = np.stack(np.meshgrid(np.linspace(-1, 1, 28), np.linspace(-1, 1, 28)), axis=-1)
    np.testing.assert_allclose(grid_sample(mnist_x, ident), mnist_x, atol=1e-6)
    shifted = ident.copy()
    shifted[..., 0] = np.clip(ident[..., 0] + 2 / 27, -1, 1)  # sample one pixel to the right
    out = grid_sample(mnist_x, shifted)
    np.testing.assert_allclose(out[:, :, :-1], mnist_x[:, :, 1:], atol=1e-6)


@pytest.mark.parametrize("factory, options, message", [
    (blended_trigger, {"alpha": 0}, r"'alpha' must be in \(0, 1\]"),
    (blended_trigger, {"alpha": 1.5}, "alpha"),
    (blended_trigger, {"path": "/no/such/key.png"}, "does not exist"),
    (blended_trigger, {"seed": -1}, "seed"),
    (sig_trigger, {"amplitude": 0}, "amplitude"),
    (sig_trigger, {"amplitude": "loud"}, "must be a number"),
    (sig_trigger, {"frequency": -2}, "frequency"),
    (warp_trigger, {"strength": 0}, "strength"),
    (warp_trigger, {"strength": 11}, r"\(0, 10\]"),
    (warp_trigger, {"grid_size": 1}, "grid_size"),
    (warp_trigger, {"grid_size": 2.5}, "integer"),
])
def test_bad_options_are_named(factory, options, message):
    with pytest.raises(TriggerError, match=message):
        factory(**options)


def test_blended_refuses_a_file_that_is_not_an_image(tmp_path):
    bogus = tmp_path / "key.png"
    bogus.write_text("not a picture")
    with pytest.raises(TriggerError, match="cannot read image"):
        blended_trigger(path=str(bogus))


def test_options_that_do_not_fit_the_images_are_refused(mnist_x):
    with pytest.raises(TriggerError, match="alias"):
        sig_trigger(frequency=15)(mnist_x)
    with pytest.raises(TriggerError, match="grid_size 32 is larger"):
        warp_trigger(grid_size=32)(mnist_x)


def n_runs(engine) -> int:
    client = engine.mlflow_client()
    experiment = client.get_experiment_by_name(engine.experiment)
    return 0 if experiment is None else len(client.search_runs([experiment.experiment_id]))


@pytest.mark.parametrize("trigger, options, field", [
    ("warp", '{"strength": -1}', "trigger_options"),
    ("blended", '{"alpha": 2}', "trigger_options"),
    ("sig", '{"frequency": 20}', "trigger"),  # valid alone, but aliases on 28-pixel-wide images
])
def test_bad_trigger_options_refused_before_any_run(gnomon_engine, mnist_sample_dirs, trigger, options, field):
    before = n_runs(gnomon_engine)
    with pytest.raises(ParamValidationError) as info:
        gnomon_engine.run("gen_poison_test_data", {"data_dir": str(mnist_sample_dirs["testing"]),
                                                   "trigger": trigger, "trigger_options": options})
    assert field in info.value.errors
    assert n_runs(gnomon_engine) == before


def test_cli_exits_2_for_bad_warp_options(mnist_sample_dirs, gnomon_home, monkeypatch):
    from typer.testing import CliRunner

    from gnomon.cli import state
    from gnomon.cli.main import build_app

    monkeypatch.setenv("COLUMNS", "200")
    state.reset()
    try:
        result = CliRunner().invoke(build_app(), [
            "run", "gen_poison_test_data", "-P", f"data_dir={mnist_sample_dirs['testing']}", "-P", "trigger=warp",
            "-P", 'trigger_options={"grid_size": 0}'], catch_exceptions=False)
    finally:
        state.reset()
    assert result.exit_code == 2, result.output
    assert "'grid_size' must be >= 2" in result.output
    assert not (gnomon_home / "artifacts").exists() or not any((gnomon_home / "artifacts").rglob("*.tar*"))


@pytest.mark.parametrize("trigger", sorted(FACTORIES))
def test_poisoned_training_set_with_each_trigger(gnomon_engine, mnist_sample_dirs, mnist_sample_arrays, trigger):
    """Through gen_poison_test_data (label_type=train): only the marked samples change, options recorded."""
    from pathlib import PurePosixPath

    from gnomon.core.datasets import read_dataset_artifact

    images = mnist_sample_arrays["training"][0].astype(np.float32) / 255.0
    result = gnomon_engine.run("gen_poison_test_data", {
        "data_dir": str(mnist_sample_dirs["training"]), "label_type": "train", "poison_fraction": 0.1,
        "target_class": 1, "trigger": trigger, "seed": 2})
    data = read_dataset_artifact(gnomon_engine, result.run_id, "adversarial_poison.tar.gz", "adv_poison_data")
    truth = data.poison_ground_truth()
    assert truth.sum() == 100 and np.all(data.y[truth] == 1)
    originals = np.stack([images[int(PurePosixPath(f).stem)] for f in data.files])
    expected = FACTORIES[trigger]()(originals[truth][..., None])
    np.testing.assert_allclose(data.x[truth], expected, atol=0.5 / 255 + 1e-6)  # 8-bit storage
    np.testing.assert_array_equal(data.x[~truth][..., 0], originals[~truth])
    assert data.metadata["trigger"] == trigger
    assert data.metadata["trigger_options"] == FACTORIES[trigger]().trigger_options
