"""Builtin part: the image preprocessing defenses (ART ``SpatialSmoothing``, ``JpegCompression``,
``GaussianAugmentation``), registered as ``DefenseSpec(kind="preprocessor")``.

Each factory returns a configured ART preprocessor. ``preprocessor(x)`` returns ``(x_defended, y)``
exactly as ART does; the ``apply_fit`` / ``apply_predict`` flags keep ART's meaning (when the
preprocessor is attached to an ART estimator, it runs on training and/or prediction inputs).

The flag rules shared by the tasks' validation and the factories live in :func:`flag_problems`, so
a bad combination is refused with the same message before any run and if a factory is called
directly. No heavy import happens at module import time.
"""

from __future__ import annotations

from typing import Any

from gnomon.core.hookspecs import hookimpl
from gnomon.core.registry import DefenseSpec

#: Value ranges ART's JPEG compression understands (``clip_values`` max must be 1 or 255).
UNIT_RANGE = (0.0, 1.0)
BYTE_RANGE = (0.0, 255.0)


def flag_problems(apply_fit: bool, apply_predict: bool, *, augmentation: bool = False,
                  prefix: str = "") -> dict[str, str]:
    """Problems with a combination of ART preprocessor flags, as ``{parameter: message}``.

    * neither ``apply_fit`` nor ``apply_predict``: the defense would never be applied;
    * Gaussian augmentation (``augmentation=True``) adds samples, which only makes sense on
      training data: ART requires ``apply_fit=True`` and ``apply_predict=False``.

    ``prefix`` is prepended to the parameter names (``"gaussian_augmentation_"`` gives the task's names).
    """
    problems: dict[str, str] = {}
    fit, predict = f"{prefix}apply_fit", f"{prefix}apply_predict"
    if not apply_fit and not apply_predict:
        problems[predict] = (f"{fit} and {predict} are both false, so the defense would never be applied; "
                             "set at least one of them to true")
    elif augmentation and apply_predict:
        aug = f"{prefix}perform_data_augmentation" if prefix else "augmentation"
        problems[predict] = (f"must be false when {aug} is true: augmentation adds noisy copies of samples, "
                             f"which ART only allows on training data ({fit}=true, {predict}=false)")
    elif augmentation and not apply_fit:  # pragma: no cover - covered by the two cases above
        problems[fit] = f"must be true when {prefix}perform_data_augmentation is true"
    return problems


def _refuse(problems: dict[str, str], defense: str) -> None:
    if problems:
        details = "; ".join(f"{k}: {v}" for k, v in problems.items())
        raise ValueError(f"invalid {defense} options: {details}")


def clip_values_for(x: Any) -> tuple[float, float]:
    """The value range ``x`` actually has, in the form ART wants: ``(0, 1)`` or ``(0, 255)``.

    Raises ``ValueError`` for negative values (ART's preprocessors need unnormalised images).
    """
    import numpy as np

    x = np.asarray(x)
    if x.size == 0:
        return UNIT_RANGE
    lo, hi = float(x.min()), float(x.max())
    if lo < 0:
        raise ValueError(f"images have negative values (min {lo:g}); the defenses need pixel values "
                         "in [0, 1] or [0, 255]")
    if hi <= 1.0:
        return UNIT_RANGE
    if hi <= 255.0:
        return BYTE_RANGE
    raise ValueError(f"images have values up to {hi:g}; the defenses need pixel values in [0, 1] or [0, 255]")


def spatial_smoothing(window_size: int = 3, *, apply_fit: bool = False, apply_predict: bool = True,
                      channels_first: bool = False, clip_values: tuple[float, float] | None = UNIT_RANGE):
    """ART ``SpatialSmoothing``: a ``window_size`` x ``window_size`` median filter over each channel."""
    from art.defences.preprocessor import SpatialSmoothing

    if not isinstance(window_size, int) or isinstance(window_size, bool) or window_size < 1:
        raise ValueError(f"window_size must be a positive integer; got {window_size!r}")
    _refuse(flag_problems(apply_fit, apply_predict), "spatial_smoothing")
    return SpatialSmoothing(window_size=window_size, channels_first=channels_first, clip_values=clip_values,
                            apply_fit=apply_fit, apply_predict=apply_predict)


def jpeg_compression(quality: int = 50, *, channels_first: bool = False, apply_fit: bool = False,
                     apply_predict: bool = True, clip_values: tuple[float, float] = UNIT_RANGE):
    """ART ``JpegCompression`` at ``quality`` (1..100); RGB images in mode ``RGB``, others per channel (``L``).

    ``clip_values`` is the data's value range, ``(0, 1)`` or ``(0, 255)`` (see :func:`clip_values_for`).
    """
    from art.defences.preprocessor import JpegCompression

    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer from 1 to 100; got {quality!r}")
    if tuple(float(v) for v in clip_values) not in (UNIT_RANGE, BYTE_RANGE):
        raise ValueError(f"clip_values must be (0, 1) or (0, 255) for JPEG compression; got {clip_values!r}")
    _refuse(flag_problems(apply_fit, apply_predict), "jpeg_compression")
    return JpegCompression(clip_values=(0.0, float(clip_values[1])), quality=quality, channels_first=channels_first,
                           apply_fit=apply_fit, apply_predict=apply_predict)


def gaussian_augmentation(sigma: float = 1.0, *, augmentation: bool = False, ratio: float = 1.0,
                          apply_fit: bool = False, apply_predict: bool = True,
                          clip_values: tuple[float, float] | None = UNIT_RANGE):
    """ART ``GaussianAugmentation``: add N(0, ``sigma``) noise, clipped to ``clip_values``.

    With ``augmentation`` the result keeps every original sample and appends
    ``int(n * ratio)`` noisy copies of samples drawn at random; otherwise every sample is
    replaced by its noisy counterpart (``ratio`` unused). ART draws from NumPy's global
    generator, which the run seeds from ``seed``.
    """
    from art.defences.preprocessor import GaussianAugmentation

    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0; got {sigma!r}")
    if augmentation and not ratio > 0:
        raise ValueError(f"ratio must be > 0 with augmentation; got {ratio!r}")
    _refuse(flag_problems(apply_fit, apply_predict, augmentation=augmentation), "gaussian_augmentation")
    return GaussianAugmentation(sigma=sigma, augmentation=augmentation, ratio=ratio, clip_values=clip_values,
                                apply_fit=apply_fit, apply_predict=apply_predict)


@hookimpl
def register_defenses(register):
    """Register the three ART preprocessors."""
    register(DefenseSpec(name="spatial_smoothing", factory=spatial_smoothing, kind="preprocessor",
                         summary="Median filter over a square window (ART SpatialSmoothing)."))
    register(DefenseSpec(name="jpeg_compression", factory=jpeg_compression, kind="preprocessor",
                         summary="JPEG compress and decompress each image (ART JpegCompression)."))
    register(DefenseSpec(name="gaussian_augmentation", factory=gaussian_augmentation, kind="preprocessor",
                         summary="Add Gaussian noise, optionally as extra samples (ART GaussianAugmentation)."))
