"""The PNG encoder behind dataset artifacts: PIL reads back exactly the pixels written."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from gnomon.core.datasets.png import encode_png


@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 1), (1, 1), (7, 13, 3), (32, 32, 3), (3, 300)])
def test_pil_decodes_exactly_what_was_encoded(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    image.flat[0], image.flat[-1] = 0, 255
    with Image.open(io.BytesIO(encode_png(image))) as im:
        im.load()
        assert im.format == "PNG" and im.mode == ("RGB" if shape[-1] == 3 and len(shape) == 3 else "L")
        back = np.asarray(im)
    np.testing.assert_array_equal(back, image.reshape(back.shape))


def test_real_mnist_images_round_trip_and_stay_small(mnist_sample_arrays):
    x, _ = mnist_sample_arrays["testing"]
    u8 = np.clip(np.rint(x[:50] * 255), 0, 255).astype(np.uint8).reshape(50, 28, 28, 1)
    blobs = [encode_png(img) for img in u8]
    for blob, img in zip(blobs, u8, strict=True):
        with Image.open(io.BytesIO(blob)) as im:
            np.testing.assert_array_equal(np.asarray(im)[..., None], img)
    assert np.mean([len(b) for b in blobs]) < 400  # compressed (raw would be 28*29 = 812 bytes)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4), np.float32), "needs uint8"),
    (np.zeros((4, 4, 2), np.uint8), r"got shape \(4, 4, 2\)"),
    (np.zeros((0, 4), np.uint8), r"got shape \(0, 4, 1\)"),
    (np.zeros((2, 4, 4, 1), np.uint8), r"got shape \(2, 4, 4, 1\)"),
])
def test_what_it_cannot_encode_is_refused_clearly(bad, message):
    with pytest.raises(ValueError, match=message):
        encode_png(bad)
