"""Builtin part: the triggers the backdoor literature compares, registered as ``AttackSpec(kind="trigger")``.

- ``blended`` (Chen et al. 2017, "Targeted backdoor attacks on deep learning systems using data
  poisoning"): every pixel is blended with a key pattern, ``x' = (1 - alpha) x + alpha k``; the key is
  a picture (``path``) or a seeded uniform-random pattern (the paper's two variants).
- ``sig`` (Barni et al. 2019, "A new backdoor attack in CNNs by training set corruption without label
  poisoning"): a horizontal sinusoid ``v(i, j) = amplitude * sin(2 pi j frequency / width)`` added to
  every row, clipped to [0, 1].
- ``warp`` (Nguyen and Tran 2021, "WaNet - imperceptible warping-based backdoor attack"): one fixed,
  seeded, smooth warping field applied with bilinear sampling. The field is the paper's: a random
  ``grid_size x grid_size x 2`` grid in [-1, 1], normalised by its mean absolute value, upsampled
  bicubically to the image size, scaled by ``strength / height`` and added to the identity sampling grid
  (clamped to [-1, 1]); PyTorch's ``interpolate(mode="bicubic", align_corners=True)`` and
  ``grid_sample(align_corners=True)`` are reproduced in NumPy (no PyTorch dependency).

Same contract as :mod:`.triggers`: ``factory(**options)`` validates every option (a
:class:`~.triggers.TriggerError` naming it, so bad options are refused before a run exists) and
returns ``apply(x) -> x_triggered`` on NHWC (or NHW) batches in [0, 1]; the output stays in [0, 1]
and the input is not modified. Seeded triggers draw from their own ``numpy`` generator, so the
same seed gives the same trigger in any process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from gnomon.core.hookspecs import hookimpl
from gnomon.core.registry import AttackSpec

from .triggers import TRIGGER_KIND, TriggerError, _as_batch, _check_int, _describe, _restore

if TYPE_CHECKING:
    import numpy as np


def _check_range(name: str, value: Any, low: float, high: float, *, low_open: bool = True) -> float:
    """``value`` as a float in ``(low, high]`` (``[low, high]`` when not ``low_open``), else TriggerError."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TriggerError(f"trigger option '{name}' must be a number; got {value!r}") from None
    bracket = "(" if low_open else "["
    if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
        raise TriggerError(f"trigger option '{name}' must be in {bracket}{low:g}, {high:g}]; got {value:g}")
    return value


def _check_int_range(name: str, value: Any, low: int, high: int) -> int:
    value = _check_int(name, value, low)
    if value > high:
        raise TriggerError(f"trigger option '{name}' must be <= {high}; got {value}")
    return value


# -- blended (Chen et al. 2017) ----------------------------------------------------------


def blended_trigger(path: str | None = None, alpha: float = 0.2, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """Blend every image with a key pattern: ``x' = (1 - alpha) * x + alpha * key``.

    Args:
        path: picture to blend in (any format PIL reads), resized bilinearly to the images' size and
            converted to their channels. Default: a uniform-random pattern in [0, 1] drawn from ``seed``
            (Chen et al.'s random-pattern key).
        alpha: blend ratio in (0, 1]; 0.2 is the paper's and BackdoorBench's training ratio.
        seed: seed of the random pattern (ignored with ``path``).
    """
    alpha = _check_range("alpha", alpha, 0.0, 1.0)
    seed = _check_int("seed", seed, 0)
    source = Path(path).expanduser() if path else None
    if source is not None:
        if not source.is_file():
            raise TriggerError(f"trigger option 'path': image file '{source}' does not exist")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(source) as im:
                im.verify()
        except (OSError, UnidentifiedImageError) as exc:
            raise TriggerError(f"trigger option 'path': cannot read image '{source}': {exc}") from None
    keys: dict[tuple[int, int, int], Any] = {}

    def key_for(height: int, width: int, channels: int):
        import numpy as np

        shape = (height, width, channels)
        if shape not in keys:
            if source is None:
                keys[shape] = np.random.default_rng(seed).random(shape, dtype=np.float32)
            else:
                from PIL import Image

                with Image.open(source) as im:
                    pic = im.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                keys[shape] = (np.asarray(pic, dtype=np.float32) / np.float32(255.0)).reshape(shape)
        return keys[shape]

    def apply(x: np.ndarray) -> np.ndarray:
        import numpy as np

        batch, squeeze = _as_batch(x, "blended")
        key = key_for(*batch.shape[1:4])
        out = (1.0 - alpha) * batch.astype(np.float32, copy=False) + np.float32(alpha) * key
        return _restore(np.clip(out, 0.0, 1.0), squeeze, batch.dtype)

    return _describe(apply, "blended", {"path": str(path) if path else None, "alpha": alpha, "seed": seed})


# -- SIG (Barni et al. 2019) ---------------------------------------------------------------


def sig_trigger(amplitude: float = 40 / 255, frequency: float = 6.0) -> Callable[[np.ndarray], np.ndarray]:
    """Add a horizontal sinusoid ``amplitude * sin(2 pi j frequency / width)`` (column ``j``) to every row.

    Args:
        amplitude: peak value on the [0, 1] pixel scale, in (0, 1]. Default 40/255 (BackdoorBench's
            delta = 40; Barni et al. train with 20 on MNIST and raise it at test time).
        frequency: periods across the image width, in (0, width / 2] (above half the width the
            sampled signal aliases). Default 6, the paper's.

    The sum is clipped to [0, 1]; on MNIST's black background the negative half-waves vanish.
    """
    amplitude = _check_range("amplitude", amplitude, 0.0, 1.0)
    frequency = _check_range("frequency", frequency, 0.0, 1024.0)

    def apply(x: np.ndarray) -> np.ndarray:
        import numpy as np

        batch, squeeze = _as_batch(x, "sig")
        width = batch.shape[2]
        if frequency > width / 2:
            raise TriggerError(f"trigger 'sig': frequency {frequency:g} is more than half the image width "
                               f"({width} pixels), so the sinusoid would alias; use at most {width / 2:g}")
        signal = np.float32(amplitude) * np.sin(2 * np.pi * np.arange(width) * frequency / width).astype(np.float32)
        out = batch.astype(np.float32, copy=False) + signal[None, None, :, None]
        return _restore(np.clip(out, 0.0, 1.0), squeeze, batch.dtype)

    return _describe(apply, "sig", {"amplitude": amplitude, "frequency": frequency})


# -- WaNet warping (Nguyen and Tran 2021) -----------------------------------------------------


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic-convolution weights of the 4 taps around offset ``t`` in [0, 1) (PyTorch's a = -0.75)."""
    import numpy as np

    d = np.stack([t + 1, t, 1 - t, 2 - t], axis=-1)  # distances to taps idx-1, idx, idx+1, idx+2
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of 1-D bicubic upsampling with ``align_corners=True`` and clamped borders.

    ``M @ v`` equals ``torch.nn.functional.interpolate(v, n_out, mode="bicubic", align_corners=True)``
    along one axis (PyTorch clamps the taps to the edge); the 2-D upsampling is separable: ``M_h g M_w^T``.
    """
    import numpy as np

    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    real = np.arange(n_out) * scale
    idx = np.floor(real).astype(np.int64)
    weights = _cubic_weights(real - idx)
    out = np.zeros((n_out, n_in))
    for tap in range(4):
        np.add.at(out, (np.arange(n_out), np.clip(idx - 1 + tap, 0, n_in - 1)), weights[:, tap])
    return out


def warp_field(height: int, width: int, grid_size: int, strength: float, seed: int) -> np.ndarray:
    """WaNet's backdoor sampling grid ``(height, width, 2)`` of (x, y) in [-1, 1], as in the paper's code.

    ``ins = uniform(-1, 1, (2, k, k))``, ``ins /= mean(|ins|)``, bicubic upsampling to the image,
    ``grid = clamp(identity + strength * noise / size, -1, 1)`` (``size`` = height for y, width for x;
    the paper's square images use the height for both).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    ins = rng.uniform(-1.0, 1.0, size=(2, grid_size, grid_size))
    ins = ins / np.mean(np.abs(ins))
    rows, cols = bicubic_matrix(grid_size, height), bicubic_matrix(grid_size, width)
    noise = np.stack([rows @ ins[c] @ cols.T for c in range(2)], axis=-1)  # (h, w, 2): x then y displacement
    gx, gy = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
    grid = np.stack([gx + strength * noise[..., 0] / width, gy + strength * noise[..., 1] / height], axis=-1)
    return np.clip(grid, -1.0, 1.0)


def grid_sample(batch: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Bilinear sampling of NHWC ``batch`` at ``grid`` (h, w, 2), ``align_corners=True``, zero padding.

    The same for every image (WaNet's field is fixed), so indices and weights are computed once.
    Each output is a convex combination of input pixels, so the value range is kept.
    """
    import numpy as np

    height, width = batch.shape[1:3]
    px = (grid[..., 0] + 1) / 2 * (width - 1)
    py = (grid[..., 1] + 1) / 2 * (height - 1)
    x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    wx, wy = (px - x0).astype(np.float32), (py - y0).astype(np.float32)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    # a tap past the last pixel only occurs with weight 0 (the clamped grid reaches the edge exactly)
    wx = np.where(x0 + 1 > width - 1, 0, wx)[None, ..., None]
    wy = np.where(y0 + 1 > height - 1, 0, wy)[None, ..., None]
    top = batch[:, y0, x0] * (1 - wx) + batch[:, y0, x1] * wx
    bottom = batch[:, y1, x0] * (1 - wx) + batch[:, y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def warp_trigger(strength: float = 0.5, grid_size: int = 4, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """WaNet's warping backdoor: resample every image through one fixed, seeded, smooth warping field.

    Args:
        strength: WaNet's ``s``, in (0, 10]; the largest displacement is about ``strength / 2`` times
            the field's peak (in pixels). Default 0.5, the paper's and BackdoorBench's.
        grid_size: WaNet's ``k``, the control grid's size, in [2, 32] and at most the image size; larger
            is a less smooth field. Default 4 (the paper's for MNIST and CIFAR-10).
        seed: seed of the random control grid (same seed, same field).
    """
    strength = _check_range("strength", strength, 0.0, 10.0)
    grid_size = _check_int_range("grid_size", grid_size, 2, 32)
    seed = _check_int("seed", seed, 0)
    grids: dict[tuple[int, int], Any] = {}

    def apply(x: np.ndarray) -> np.ndarray:
        import numpy as np

        batch, squeeze = _as_batch(x, "warp")
        height, width = batch.shape[1:3]
        if min(height, width) < grid_size:
            raise TriggerError(f"trigger 'warp': grid_size {grid_size} is larger than the {height}x{width} images")
        if (height, width) not in grids:
            grids[(height, width)] = warp_field(height, width, grid_size, strength, seed)
        out = grid_sample(batch.astype(np.float32, copy=False), grids[(height, width)])
        return _restore(np.clip(out, 0.0, 1.0), squeeze, batch.dtype)

    return _describe(apply, "warp", {"strength": strength, "grid_size": grid_size, "seed": seed})


@hookimpl
def register_attacks(register) -> None:
    """Register the literature's triggers: blended, sig and warp."""
    register(AttackSpec(name="blended", kind=TRIGGER_KIND, factory=blended_trigger,
                        summary="Chen et al. 2017: blend a key pattern into the whole image, (1-alpha)x + alpha*key "
                                "(options: path (default: seeded random pattern), alpha=0.2, seed=0)."))
    register(AttackSpec(name="sig", kind=TRIGGER_KIND, factory=sig_trigger,
                        summary="Barni et al. 2019: add a horizontal sinusoid (options: amplitude=40/255, "
                                "frequency=6)."))
    register(AttackSpec(name="warp", kind=TRIGGER_KIND, factory=warp_trigger,
                        summary="WaNet (Nguyen and Tran 2021): fixed seeded smooth warping field "
                                "(options: strength=0.5, grid_size=4, seed=0)."))


__all__ = ["bicubic_matrix", "blended_trigger", "grid_sample", "register_attacks", "sig_trigger", "warp_field",
           "warp_trigger"]
