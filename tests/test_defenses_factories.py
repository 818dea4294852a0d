"""The registered ART preprocessor factories and their shared flag rules (no MLflow needed)."""

from __future__ import annotations

import numpy as np
import pytest

from gnomon.plugins.builtin import defenses


def test_registered_as_preprocessors(gnomon_engine):
    registry = gnomon_engine.registry
    builtin = [n for n in registry.names("defense", sub_kind="preprocessor")
               if registry.get("defense", n).plugin == "builtin.defenses"]
    assert builtin == ["gaussian_augmentation", "jpeg_compression", "spatial_smoothing"]
    for name in ("spatial_smoothing", "jpeg_compression", "gaussian_augmentation"):
        assert registry.get("defense", name).plugin == "builtin.defenses"
        task = registry.tasks[name]
        assert task.category == "defense" and task.check is not None


def test_factories_build_configured_art_preprocessors():
    from art.defences.preprocessor import GaussianAugmentation, JpegCompression, SpatialSmoothing

    smooth = defenses.spatial_smoothing(5, apply_fit=True, apply_predict=False)
    assert isinstance(smooth, SpatialSmoothing) and smooth.window_size == 5
    assert smooth.apply_fit and not smooth.apply_predict
    jpeg = defenses.jpeg_compression(30, clip_values=(0, 255))
    assert isinstance(jpeg, JpegCompression) and jpeg.quality == 30 and jpeg.clip_values == (0.0, 255.0)
    noise = defenses.gaussian_augmentation(0.2, augmentation=True, ratio=0.5, apply_fit=True, apply_predict=False)
    assert isinstance(noise, GaussianAugmentation) and noise.augmentation and noise.ratio == 0.5


@pytest.mark.parametrize("fit, predict, augmentation, bad", [
    (False, False, False, "apply_predict"),
    (False, True, True, "apply_predict"),
    (True, True, True, "apply_predict"),
    (False, False, True, "apply_predict"),
])
def test_flag_rules(fit, predict, augmentation, bad):
    problems = defenses.flag_problems(fit, predict, augmentation=augmentation, prefix="gaussian_augmentation_")
    assert list(problems) == [f"gaussian_augmentation_{bad}"]
    with pytest.raises(ValueError, match="invalid gaussian_augmentation options"):
        defenses.gaussian_augmentation(0.1, augmentation=augmentation, apply_fit=fit, apply_predict=predict)


@pytest.mark.parametrize("fit, predict, augmentation", [(True, False, True), (True, True, False), (False, True, False)])
def test_valid_flags(fit, predict, augmentation):
    assert defenses.flag_problems(fit, predict, augmentation=augmentation) == {}


def test_bad_options_raise_with_the_option_named():
    with pytest.raises(ValueError, match="window_size"):
        defenses.spatial_smoothing(0)
    with pytest.raises(ValueError, match="quality"):
        defenses.jpeg_compression(0)
    with pytest.raises(ValueError, match="clip_values"):
        defenses.jpeg_compression(50, clip_values=(0, 2))
    with pytest.raises(ValueError, match="sigma"):
        defenses.gaussian_augmentation(-1.0)


def test_clip_values_follow_the_data():
    assert defenses.clip_values_for(np.array([0.0, 0.5, 1.0])) == (0.0, 1.0)
    assert defenses.clip_values_for(np.array([0, 17, 255], dtype=np.uint8)) == (0.0, 255.0)
    with pytest.raises(ValueError, match="negative"):
        defenses.clip_values_for(np.array([-0.5, 0.5]))
    with pytest.raises(ValueError, match="up to 300"):
        defenses.clip_values_for(np.array([0.0, 300.0]))


def test_jpeg_keeps_each_value_range(mnist_sample_arrays):
    images = mnist_sample_arrays["testing"][0][:20, :, :, None]
    unit = images.astype(np.float32) / 255
    byte = images.astype(np.float32)
    out_unit, _ = defenses.jpeg_compression(20, clip_values=defenses.clip_values_for(unit))(unit)
    out_byte, _ = defenses.jpeg_compression(20, clip_values=defenses.clip_values_for(byte))(byte)
    assert out_unit.max() <= 1.0 and out_unit.max() > 0.9
    assert out_byte.max() > 200
    np.testing.assert_allclose(out_unit * 255, out_byte, atol=1e-3)  # same compression, only the scale differs
    assert np.abs(out_unit - unit).mean() > 0.005


@pytest.mark.parametrize("name, options", [
    ("spatial_smoothing", {"window_size": 3}),
    ("jpeg_compression", {"quality": 40}),
    ("jpeg_compression", {"quality": 40, "channels_first": True}),
    ("gaussian_augmentation", {"sigma": 0.2}),
])
def test_chunked_application_equals_one_art_call(mnist_sample_arrays, name, options):
    """The tasks apply preprocessors in chunks; the result is the same as one call on all images."""
    from gnomon.core.context import RunContext
    from gnomon.plugins.builtin.defense_tasks import apply_preprocessor

    x = (mnist_sample_arrays["testing"][0][:130].astype(np.float32) / 255)[..., None]
    factory = getattr(defenses, name)
    channels_first = options.get("channels_first", False)
    ctx = RunContext(task=name, run_id=None, params={}, seed=0, engine=None, show_progress=False)
    np.random.seed(11)
    chunked = apply_preprocessor(ctx, factory(**options), x, batch_size=16, channels_first=channels_first,
                                 description=name)
    np.random.seed(11)
    whole, _ = factory(**options)(x.transpose(0, 3, 1, 2) if channels_first else x)
    if channels_first:
        whole = whole.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(chunked, whole)
    assert not np.array_equal(chunked, x)
