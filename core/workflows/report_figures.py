"""The report's pictures (matplotlib, Agg backend): results bars, example image grid, training curves.

Each function returns PNG bytes, or None when there is nothing to draw.
"""

from __future__ import annotations

import io
from typing import Any

from .report_data import ResultRow


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def results_chart(rows: list[ResultRow]) -> bytes | None:
    """Grouped bars per defense: clean accuracy and attack success rate, one panel per model."""
    rows = [r for r in rows if r.clean_accuracy is not None or r.attack_success_rate is not None]
    if not rows:
        return None
    import numpy as np

    plt = _pyplot()
    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(max(5.0, 4.2 * len(models)), 4.0), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r.model == model]
        x = np.arange(len(mine))
        acc = [r.clean_accuracy if r.clean_accuracy is not None else np.nan for r in mine]
        asr = [r.attack_success_rate if r.attack_success_rate is not None else np.nan for r in mine]
        b1 = ax.bar(x - 0.2, acc, 0.4, label="clean accuracy", color="#2b8cbe")
        b2 = ax.bar(x + 0.2, asr, 0.4, label="attack success rate", color="#e34a33")
        for bars, values in ((b1, acc), (b2, asr)):
            for bar, value in zip(bars, values, strict=True):
                if not np.isnan(value):
                    ax.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.2f}", ha="center",
                            va="bottom", fontsize=8)
        ax.set_xticks(x, [r.defense.replace("_", " ") for r in mine], rotation=20, ha="right")
        ax.set_ylim(0, 1.12)
        ax.set_title(model)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("fraction")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle("Clean accuracy and attack success rate per defense")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9, frameon=False)
    return _png(fig)


def example_grid(rows: list[tuple[str, list[Any]]], captions: list[str]) -> bytes | None:
    """Rows of images (clean, triggered, defended), the same samples in every row."""
    if not rows or not rows[0][1]:
        return None
    plt = _pyplot()
    n_cols = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.3 * n_cols + 1.6, 1.35 * len(rows) + 0.4),
                             squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            image = images[c] if c < len(images) else None
            if image is None:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=7)
            elif image.ndim == 2 or image.shape[-1] == 1:
                ax.imshow(image.reshape(image.shape[0], image.shape[1]), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image.clip(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and c < len(captions):
                ax.set_title(captions[c], fontsize=8)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle("Example images (same samples in every row)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _split_metric(key: str) -> tuple[str, str]:
    for prefix in ("train_", "val_", "validation_"):
        if key.startswith(prefix):
            return key[len(prefix):], prefix.rstrip("_")
    return key, ""


def curves_chart(curves: dict[str, dict[str, list[tuple[int, float]]]]) -> bytes | None:
    """One panel per quantity (loss, accuracy, ...); a line per training step and split (train / val)."""
    if not curves:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    panels: dict[str, list[tuple[str, list[tuple[int, float]]]]] = {}
    for key in sorted(curves):
        base, split = _split_metric(key)
        for step_name, points in curves[key].items():
            panels.setdefault(base, []).append((f"{step_name} {split}".strip(), points))
    steps = list(dict.fromkeys(name for per_step in curves.values() for name in per_step))
    colors = [c["color"] for c in plt.rcParams["axes.prop_cycle"]]
    preferred = ["loss", "accuracy"]
    keys = [k for k in preferred if k in panels] or sorted(panels)[:4]
    last_epoch = max(p[0] for series in panels.values() for _, points in series for p in points)
    cols = min(len(keys), 2)
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.6 * rows), squeeze=False)
    for i, key in enumerate(keys):
        ax = axes[i // cols][i % cols]
        for label, points in sorted(panels[key]):
            style = "--" if label.endswith(" val") else "-"
            color = colors[steps.index(label.rsplit(" ", 1)[0] if label.endswith((" train", " val")) else label)
                           % len(colors)]
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="s" if style == "--" else "o",
                    markersize=4, label=label, color=color)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        if last_epoch <= 20:
            ax.set_xticks(range(1, int(last_epoch) + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.5, last_epoch + 0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for j in range(len(keys), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle("Training curves (solid, circles: training data; dashed, squares: validation)")
    fig.tight_layout()
    return _png(fig)
