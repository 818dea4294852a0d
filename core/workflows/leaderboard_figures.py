"""The leaderboard's pictures: each metric against a swept numeric variable (one line per defense, 95% CI
bands) and a heatmap of attack settings x defense. PNG bytes, or None when there is nothing to draw."""

from __future__ import annotations

from .leaderboard import METRICS, Leaderboard
from .refs import value_text
from .report_figures import _png, _pyplot


def metric_plots(board: Leaderboard, variable: str) -> bytes | None:
    """One panel per metric (and per combination of the other swept variables): metric vs ``variable``."""
    others = [v for v in board.variables if v != variable]
    facets: dict[tuple, list] = {}
    for row in board.rows:
        facets.setdefault(tuple(value_text(row.values[o]) for o in others), []).append(row)
    if not board.rows or not board.defenses:
        return None
    facets = dict(list(facets.items())[:6])
    plt = _pyplot()
    fig, axes = plt.subplots(len(facets), len(METRICS), figsize=(3.3 * len(METRICS), 2.9 * len(facets)),
                             squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, (facet, rows) in enumerate(facets.items()):
        rows = sorted(rows, key=lambda row: row.values[variable])
        xs = [row.values[variable] for row in rows]
        for c, metric in enumerate(METRICS):
            ax = axes[r][c]
            for k, defense in enumerate(board.defenses):
                if metric == "DER" and defense == "none":
                    continue
                stats = [row.cells.get(defense, {}).get(metric) for row in rows]
                points = [(x, s) for x, s in zip(xs, stats, strict=True) if s is not None and s.mean is not None]
                if not points:
                    continue
                px = [p[0] for p in points]
                mean = [p[1].mean for p in points]
                half = [p[1].ci95 or 0.0 for p in points]
                colour = colours[k % len(colours)]
                ax.plot(px, mean, marker="o", label=defense, color=colour)
                ax.fill_between(px, [m - h for m, h in zip(mean, half, strict=True)],
                                [m + h for m, h in zip(mean, half, strict=True)], color=colour, alpha=0.18)
            ax.set_xlabel(variable)
            title = metric + (f" ({', '.join(f'{o}={v}' for o, v in zip(others, facet, strict=True))})" if others else "")
            ax.set_title(title, fontsize=9)
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            if len(set(xs)) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 20:
                ax.set_xscale("log")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels) or 1, fontsize=9, frameon=False)
    return _png(fig)


def heatmap(board: Leaderboard) -> bytes | None:
    """Mean ASR and mean DER for each attack setting (row) and defense (column), annotated."""
    if not board.rows or not board.defenses:
        return None
    import numpy as np

    plt = _pyplot()
    labels = [row.label for row in board.rows]
    fig, axes = plt.subplots(1, 2, figsize=(4.0 + 1.4 * len(board.defenses) * 2, 1.4 + 0.45 * len(labels)),
                             squeeze=False)
    for ax, metric, cmap in ((axes[0][0], "ASR", "Reds"), (axes[0][1], "DER", "Greens")):
        grid = np.array([[(row.cells.get(d, {}).get(metric).mean
                           if row.cells.get(d, {}).get(metric) is not None
                           and row.cells[d][metric].mean is not None else np.nan)
                          for d in board.defenses] for row in board.rows], dtype=float)
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(board.defenses)), board.defenses, rotation=25, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] > 0.6 else "black")
        ax.set_title(f"mean {metric}")
    fig.suptitle(f"{board.model}: attack settings x defense")
    fig.tight_layout()
    return _png(fig)
