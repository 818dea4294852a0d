"""The ``feature_squeezing`` defense: ART ``FeatureSqueezing`` (reduce every value to ``bit_depth`` bits).

Feature squeezing (Xu, Evans and Qi, 2018) maps each value ``v`` in ``[lo, hi]`` to
``round((v - lo) / (hi - lo) * (2**bit_depth - 1)) / (2**bit_depth - 1) * (hi - lo) + lo``,
which removes the small perturbations many evasion attacks rely on.
"""

from __future__ import annotations

import warnings

from gnomon.core.registry import DefenseSpec

#: Bit depths ART accepts.
MIN_BIT_DEPTH, MAX_BIT_DEPTH = 1, 64


def feature_squeezing(bit_depth: int = 4, *, apply_fit: bool = False, apply_predict: bool = True,
                      clip_values: tuple[float, float] = (0.0, 1.0)):
    """A configured ART ``FeatureSqueezing`` preprocessor; ``preprocessor(x)`` returns ``(x_squeezed, y)``.

    ``clip_values`` is the data's value range (gnomon's images are in ``(0, 1)``); ``apply_fit`` /
    ``apply_predict`` keep ART's meaning when the preprocessor is attached to an ART estimator.
    """
    if isinstance(bit_depth, bool) or not isinstance(bit_depth, int) or not MIN_BIT_DEPTH <= bit_depth <= MAX_BIT_DEPTH:
        raise ValueError(f"bit_depth must be an integer from {MIN_BIT_DEPTH} to {MAX_BIT_DEPTH}; got {bit_depth!r}")
    if not apply_fit and not apply_predict:
        raise ValueError("apply_fit and apply_predict are both false, so the defense would never be applied")
    lo, hi = (float(v) for v in clip_values)
    if not hi > lo:
        raise ValueError(f"clip_values must be (min, max) with max > min; got {clip_values!r}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*PyTorch not found.*")
        from art.defences.preprocessor import FeatureSqueezing

    return FeatureSqueezing(clip_values=(lo, hi), bit_depth=bit_depth, apply_fit=apply_fit,
                            apply_predict=apply_predict)


DEFENSE = DefenseSpec(
    name="feature_squeezing",
    summary="Reduce the colour depth of each image to bit_depth bits (ART FeatureSqueezing).",
    factory=feature_squeezing,
    kind="preprocessor",
)
