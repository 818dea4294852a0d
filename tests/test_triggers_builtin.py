"""The builtin backdoor triggers on real MNIST images: exactly which pixels change, grayscale and RGB."""

from __future__ import annotations

import numpy as np
import pytest

from gnomon.core.errors import UnknownNameError
from gnomon.core.plugins import load_plugins
from gnomon.plugins.builtin.triggers import (
    BUNDLED_IMAGE,
    TriggerError,
    image_trigger,
    make_trigger,
    pattern_trigger,
    single_pixel_trigger,
)


@pytest.fixture(scope="module")
def mnist_x(request):
    """20 real MNIST test digits as float32 NHWC in [0, 1]."""
    arrays = request.getfixturevalue("mnist_sample_arrays")
    images = arrays["testing"][0][:20]
    return (images.astype(np.float32) / 255.0)[..., None]


def changed_pixels(before, after):
    """Set of (row, col) where any image/channel differs."""
    diff = np.any(before != after, axis=tuple(i for i in range(before.ndim) if i not in (1, 2)))
    return {tuple(map(int, p)) for p in np.argwhere(diff)}


def pattern_pixels(h, w, d):
    return {(h - d, w - d), (h - d - 1, w - d - 1), (h - d, w - d - 2), (h - d - 2, w - d)}


@pytest.mark.parametrize("distance", [2, 4])
def test_pattern_sets_exactly_its_four_pixels_on_grayscale(mnist_x, distance):
    out = pattern_trigger(distance=distance)(mnist_x)
    assert out.shape == mnist_x.shape and out.dtype == np.float32
    expected = pattern_pixels(28, 28, distance)
    assert changed_pixels(mnist_x, out) <= expected
    for r, c in expected:
        assert np.all(out[:, r, c, 0] == 1.0)
    mask = np.ones((28, 28), bool)
    for r, c in expected:
        mask[r, c] = False
    np.testing.assert_array_equal(out[:, mask], mnist_x[:, mask])


def test_pattern_on_rgb_and_nhw_batches(mnist_x):
    rgb = np.repeat(mnist_x, 3, axis=-1) * np.array([0.2, 0.5, 0.9], dtype=np.float32)
    out = pattern_trigger(pixel_value=0.75)(rgb)
    assert out.shape == rgb.shape
    for r, c in pattern_pixels(28, 28, 2):
        assert np.all(out[:, r, c, :] == np.float32(0.75))
    assert changed_pixels(rgb, out) <= pattern_pixels(28, 28, 2)
    nhw = mnist_x[..., 0]
    out2 = pattern_trigger()(nhw)
    assert out2.shape == nhw.shape
    np.testing.assert_array_equal(out2, pattern_trigger()(mnist_x)[..., 0])
    assert np.array_equal(nhw, mnist_x[..., 0]), "the trigger must not modify its input in place"


def test_single_pixel_changes_one_pixel(mnist_x):
    out = single_pixel_trigger(distance=3)(mnist_x)
    assert changed_pixels(mnist_x, out) == {(25, 25)}
    assert np.all(out[:, 25, 25, 0] == 1.0)


def test_image_trigger_changes_only_the_opaque_part_of_the_picture(mnist_x):
    from PIL import Image

    rgba = np.asarray(Image.open(BUNDLED_IMAGE).convert("RGBA"))
    alpha = rgba[..., 3] > 0
    bright = alpha & (rgba[..., :3].sum(axis=-1) > 0)
    out = image_trigger()(mnist_x)  # bottom_right, margin 1: rows/cols 19..26
    assert out.shape == mnist_x.shape
    allowed = {(19 + r, 19 + c) for r, c in zip(*np.nonzero(alpha), strict=True)}
    changed = changed_pixels(mnist_x, out)
    assert changed and changed <= allowed
    # on digits whose corner is black, every bright trigger pixel shows up and its black ones do not
    blank = np.flatnonzero(mnist_x[:, 19:27, 19:27, 0].max(axis=(1, 2)) == 0)
    assert len(blank) > 0
    assert changed_pixels(mnist_x[blank], out[blank]) == {(19 + r, 19 + c) for r, c in zip(*np.nonzero(bright), strict=True)}
    rgb = np.repeat(mnist_x, 3, axis=-1)
    out_rgb = image_trigger(position="top_left", margin=0)(rgb)
    assert changed_pixels(rgb, out_rgb) <= {(r, c) for r, c in zip(*np.nonzero(alpha), strict=True)}
    # a yellow picture on black RGB pixels: red raised, blue not
    r, c = map(int, np.argwhere(bright)[0])
    assert rgb[0, r, c].max() == 0 and out_rgb[0, r, c, 0] > 0.5 and out_rgb[0, r, c, 2] == 0


def test_image_trigger_random_position_is_seeded(mnist_x):
    a = image_trigger(position="random", size=4, seed=1)(mnist_x)
    b = image_trigger(position="random", size=4, seed=1)(mnist_x)
    c = image_trigger(position="random", size=4, seed=2)(mnist_x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_image_trigger_with_a_user_picture(tmp_path, mnist_x):
    from PIL import Image

    picture = tmp_path / "square.png"
    Image.fromarray(np.full((3, 3), 255, np.uint8), "L").save(picture)
    out = image_trigger(path=str(picture), blend=1.0, x_shift=0, y_shift=0)(mnist_x)
    assert changed_pixels(mnist_x, out) <= {(r, c) for r in range(3) for c in range(3)}
    assert np.allclose(out[:, :3, :3, 0], 1.0)


@pytest.mark.parametrize("factory, options, message", [
    (pattern_trigger, {"distance": 0}, "distance"),
    (pattern_trigger, {"pixel_value": 2}, "pixel_value"),
    (image_trigger, {"path": "/no/such/picture.png"}, "does not exist"),
    (image_trigger, {"position": "middle"}, "position"),
    (image_trigger, {"x_shift": 3}, "y_shift"),
])
def test_bad_options_are_named(factory, options, message):
    with pytest.raises(TriggerError, match=message):
        factory(**options)


def test_trigger_that_does_not_fit_says_so(mnist_x):
    with pytest.raises(TriggerError, match="at least"):
        pattern_trigger(distance=30)(mnist_x)
    with pytest.raises(TriggerError, match="does not fit"):
        image_trigger(size=40)(mnist_x)
    with pytest.raises(TriggerError, match="channels"):
        pattern_trigger()(np.zeros((2, 28, 28, 2), np.float32))


def test_make_trigger_by_name_checks_options():
    registry = load_plugins(environ={}).registry
    assert {"pattern", "single_pixel", "image"} <= set(registry.names("attack", sub_kind="trigger"))
    fn = make_trigger(registry, "single_pixel", {"distance": 5})
    assert fn.trigger_options == {"distance": 5, "pixel_value": 1.0}
    with pytest.raises(TriggerError, match="does not accept option.*colour.*accepts: distance, pixel_value"):
        make_trigger(registry, "pattern", {"colour": 1})
    with pytest.raises(UnknownNameError):
        make_trigger(registry, "no_such_trigger")
