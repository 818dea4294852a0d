"""Builtin part: the detectors' pictures (matplotlib, Agg): cluster projections, STRIP entropies, NC triggers.

Each function returns a matplotlib Figure; the tasks log them with ``ctx.log_figure``.
"""

from __future__ import annotations

from typing import Any

#: Points drawn per class in the projection pictures (a seeded subsample; the metrics use every sample).
MAX_POINTS = 600


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def projection_figure(points_by_class: list[Any], groups_by_class: list[Any], poisoned_by_class: list[Any] | None,
                      class_names: list[str], *, title: str, group_label: str, seed: int = 0):
    """One panel per class: 2-D points coloured by group (cluster or kept/flagged); poisoned samples ringed.

    ``points_by_class[c]`` is ``(n_c, 2)``; ``groups_by_class[c]`` ints ``(n_c,)``;
    ``poisoned_by_class[c]`` bools ``(n_c,)`` or None when the ground truth is unknown.
    """
    import numpy as np

    plt = _pyplot()
    n = len(class_names)
    cols = min(5, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.8 * rows + 0.6), squeeze=False)
    rng = np.random.default_rng(seed)
    cmap = plt.get_cmap("tab10")
    for c in range(rows * cols):
        ax = axes[c // cols][c % cols]
        ax.set_xticks([])
        ax.set_yticks([])
        if c >= n:
            ax.axis("off")
            continue
        pts = np.asarray(points_by_class[c])
        groups = np.asarray(groups_by_class[c]).astype(int)
        poisoned = None if poisoned_by_class is None else np.asarray(poisoned_by_class[c], dtype=bool)
        ax.set_title(f"class {class_names[c]} ({len(pts)})", fontsize=9)
        if len(pts) == 0:
            continue
        keep = np.sort(rng.choice(len(pts), size=min(MAX_POINTS, len(pts)), replace=False))
        pts2 = pts[keep] if pts.shape[1] >= 2 else np.column_stack([pts[keep, 0], np.zeros(len(keep))])
        ax.scatter(pts2[:, 0], pts2[:, 1], s=6, c=[cmap(g % 10) for g in groups[keep]], alpha=0.7, linewidths=0)
        if poisoned is not None and poisoned[keep].any():
            p = poisoned[keep]
            ax.scatter(pts2[p, 0], pts2[p, 1], s=18, facecolors="none", edgecolors="black", linewidths=0.5)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=cmap(g), label=f"{group_label} {g}") for g in range(2)]
    if poisoned_by_class is not None:
        handles.append(Line2D([], [], marker="o", ls="", markerfacecolor="none", color="black",
                              label="poisoned (ground truth)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def entropy_figure(clean, triggered, threshold: float, *, title: str):
    """Histograms of STRIP's entropy on clean and triggered inputs, with the abstention threshold."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    hi = float(max(np.max(clean, initial=0.0), np.max(triggered, initial=0.0), threshold)) * 1.05 or 1.0
    bins = np.linspace(0.0, hi, 50)
    ax.hist(clean, bins=bins, alpha=0.6, label=f"clean ({len(clean)})", color="#2b8cbe")
    ax.hist(triggered, bins=bins, alpha=0.6, label=f"triggered ({len(triggered)})", color="#e34a33")
    ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("normalised entropy of superimposed predictions")
    ax.set_ylabel("inputs")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def trigger_grid(masks, patterns, norms, anomaly, flagged, class_names: list[str]):
    """Neural Cleanse per class: mask, pattern and mask * pattern, captioned with the L1 norm and anomaly index."""
    import numpy as np

    plt = _pyplot()
    n = len(class_names)
    fig, axes = plt.subplots(3, n, figsize=(1.25 * n + 0.8, 4.4), squeeze=False)
    for c in range(n):
        mask, pattern = np.asarray(masks[c]), np.asarray(patterns[c])
        shown = (mask, pattern, mask * pattern)
        for r, image in enumerate(shown):
            ax = axes[r][c]
            img = image[..., 0] if image.shape[-1] == 1 else np.clip(image, 0, 1)
            ax.imshow(img, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        colour = "#c0392b" if c in flagged else "black"
        axes[0][c].set_title(f"{class_names[c]}\nL1 {norms[c]:.0f}\nAI {anomaly[c]:.1f}", fontsize=7.5, color=colour)
    for r, label in enumerate(("mask", "pattern", "mask x pattern")):
        axes[r][0].set_ylabel(label, fontsize=8)
    flagged_txt = ", ".join(class_names[c] for c in flagged) or "none"
    fig.suptitle(f"Neural Cleanse: reverse-engineered triggers (flagged: {flagged_txt}; AI = anomaly index)",
                 fontsize=10)
    fig.tight_layout()
    return fig
