"""Size of a perturbation: per-image L2 and L-infinity distances between clean and altered images.

Dioptra's attack plugins logged "distance metrics" for every attack; gnomon's attacks and
defenses log the same four figures through :func:`distance_metrics` so that runs compare.
Only NumPy is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The keys :func:`distance_metrics` returns, in order.
METRIC_KEYS = ("l2_mean", "l2_max", "linf_mean", "linf_max")

_CHUNK = 4096  # images per chunk: bounds the float64 temporaries on large datasets


def per_image_norms(x_clean: Any, x_adv: Any) -> tuple[np.ndarray, np.ndarray]:
    """L2 and L-infinity norm of ``x_adv - x_clean`` for each image (float64 arrays of length n).

    Both arrays must have the same shape ``(n, ...)``; the norms are taken over all of an
    image's values (height, width and channels together).
    """
    a = np.asarray(x_clean)
    b = np.asarray(x_adv)
    if a.shape != b.shape:
        raise ValueError(f"distance metrics need images of the same shape; got {a.shape} and {b.shape}")
    if a.ndim < 2:
        raise ValueError(f"distance metrics need a batch of images (n, ...); got shape {a.shape}")
    n = a.shape[0]
    l2 = np.empty(n, dtype=np.float64)
    linf = np.empty(n, dtype=np.float64)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        diff = (b[start:stop].astype(np.float64) - a[start:stop].astype(np.float64)).reshape(stop - start, -1)
        l2[start:stop] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        linf[start:stop] = np.abs(diff).max(axis=1) if diff.shape[1] else 0.0
    return l2, linf


def distance_metrics(x_clean: Any, x_adv: Any, *, only_perturbed: bool = True) -> dict[str, float]:
    """Mean and maximum per-image L2 and L-infinity distance between ``x_clean`` and ``x_adv``.

    Returns ``{"l2_mean", "l2_max", "linf_mean", "linf_max"}``. With ``only_perturbed`` (the
    default) the means are taken over the images that actually changed, so poisoning 10% of a
    dataset reports the size of one poison, not a tenth of it; if nothing changed every value
    is 0.0.
    """
    l2, linf = per_image_norms(x_clean, x_adv)
    if only_perturbed:
        changed = linf > 0
        l2, linf = l2[changed], linf[changed]
    if l2.size == 0:
        return {key: 0.0 for key in METRIC_KEYS}
    return {
        "l2_mean": float(l2.mean()),
        "l2_max": float(l2.max()),
        "linf_mean": float(linf.mean()),
        "linf_max": float(linf.max()),
    }


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """``{"l2_mean": ...}`` -> ``{"<prefix>l2_mean": ...}`` for logging several perturbations in one run."""
    return {f"{prefix}{key}": value for key, value in metrics.items()}


__all__ = ["METRIC_KEYS", "distance_metrics", "per_image_norms", "prefixed"]
