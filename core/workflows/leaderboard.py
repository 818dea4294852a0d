"""The leaderboard of a sweep: one row per combination of swept variables except the seed, one column
group per defense (``none`` included), each cell CA, ASR, RA and DER as mean, standard deviation and
95% confidence interval over the seeds.

Everything is read back from the tracking store (the sweep's parent run, its combinations'
workflow runs and their steps' runs), so ``gnomon report SWEEP_RUN_ID`` rebuilds it. The
folder holds ``leaderboard.html`` (PNGs embedded), ``leaderboard.json``, the PNGs and
``results.csv`` (tidy: one row per cell and seed, ready for ``pandas.read_csv``).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GnomonError
from .refs import value_text
from .report_data import (
    DEFAULT_ACCURACY_METRIC,
    DEFAULT_ASR_METRIC,
    NO_DEFENSE,
    defense_effectiveness,
    result_rows,
    workflow_steps,
)
from .sweep import SEED_VARIABLE, SWEEP_PARENT_TAG, SWEEP_TAG, SWEEP_VAR_TAG

METRICS = ("CA", "ASR", "RA", "DER")
METRIC_NAMES = {"CA": "clean accuracy", "ASR": "attack success rate", "RA": "robust accuracy (triggered, true labels)",
                "DER": "defense effectiveness rating"}


@dataclass
class Stat:
    """Mean, sample standard deviation and 95% t-interval half-width over ``n`` seeds."""

    mean: float | None
    std: float | None
    ci95: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "ci95": self.ci95, "n": self.n}


def summarize(values: list[float | None]) -> Stat:
    """Mean, std (ddof 1) and the 95% confidence half-width ``t(0.975, n-1) * std / sqrt(n)``."""
    xs = [float(v) for v in values if v is not None and not math.isnan(v)]
    n = len(xs)
    if n == 0:
        return Stat(None, None, None, 0)
    mean = sum(xs) / n
    if n == 1:
        return Stat(mean, None, None, 1)
    from scipy.stats import t

    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Stat(mean, std, float(t.ppf(0.975, n - 1)) * std / math.sqrt(n), n)


@dataclass
class LeaderRow:
    """One combination of the swept variables other than the seed."""

    values: dict[str, Any]
    cells: dict[str, dict[str, Stat]]  # defense -> metric -> Stat
    seeds: list[Any] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={value_text(v)}" for k, v in self.values.items()) or "(all)"


@dataclass
class Leaderboard:
    """The table, the tidy records behind it and where it was written."""

    run_id: str
    workflow: str
    status: str
    model: str
    axes: dict[str, list[Any]]
    variables: list[str]          # swept variables other than the seed
    defenses: list[str]
    rows: list[LeaderRow]
    records: list[dict[str, Any]]  # one per cell and seed
    directory: Path | None = None
    html_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "workflow": self.workflow, "status": self.status, "model": self.model,
                "axes": self.axes, "variables": self.variables, "seed_variable": SEED_VARIABLE,
                "defenses": self.defenses, "metrics": list(METRICS),
                "rows": [{"values": r.values, "seeds": r.seeds,
                          "cells": {d: {m: s.to_dict() for m, s in cell.items()} for d, cell in r.cells.items()}}
                         for r in self.rows],
                "html": str(self.html_path) if self.html_path else None}


def is_sweep_run(engine, run_id: str) -> bool:
    try:
        return SWEEP_TAG in engine.mlflow_client().get_run(run_id).data.tags
    except Exception:
        return False


def collect_leaderboard(engine, run_id: str) -> Leaderboard:
    """Read sweep ``run_id``, its combinations' workflow runs and their steps from the tracking store."""
    from .report_data import get_run_or_fail

    client = engine.mlflow_client()
    parent = get_run_or_fail(engine, run_id)
    tags = parent.data.tags
    if SWEEP_TAG not in tags:
        raise GnomonError(f"run '{run_id}' is not a sweep run (it has no '{SWEEP_TAG}' tag)")
    axes = json.loads(tags.get("gnomon.sweep.axes", "{}"))
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`{SWEEP_PARENT_TAG}` = '{run_id}'", max_results=5000)
    records: list[dict[str, Any]] = []
    model = ""
    defenses: list[str] = []
    for child in sorted(children, key=lambda r: r.info.start_time):
        values = {}
        for axis, options in axes.items():
            text = child.data.tags.get(SWEEP_VAR_TAG + axis)
            values[axis] = next((o for o in options if value_text(o) == text), text)
        plan, steps = workflow_steps(client, child.info.run_id, child.data.tags, child.info.experiment_id)
        opts = plan.get("report") or {}
        rows = result_rows(steps, opts.get("accuracy_metric", DEFAULT_ACCURACY_METRIC),
                           opts.get("asr_metric", DEFAULT_ASR_METRIC))
        models = list(dict.fromkeys(r.model for r in rows))
        model = opts.get("model") or model or (models[-1] if models else "")
        base = next((r for r in rows if r.model == model and r.defense == NO_DEFENSE), None)
        for row in rows:
            if row.model != model:
                continue
            if row.defense not in defenses:
                defenses.append(row.defense)
            der = None if base is None or row.defense == NO_DEFENSE else defense_effectiveness(
                base.clean_accuracy, base.attack_success_rate, row.clean_accuracy, row.attack_success_rate)
            records.append({**values, "defense": row.defense, "CA": row.clean_accuracy,
                            "ASR": row.attack_success_rate, "RA": row.triggered_accuracy, "DER": der,
                            "workflow_run_id": child.info.run_id})
    defenses.sort(key=lambda d: d != NO_DEFENSE)
    variables = [a for a in axes if a != SEED_VARIABLE]
    groups: dict[tuple, LeaderRow] = {}
    order = [tuple(value_text(v) for v in combo) for combo in _product([axes[a] for a in variables])]
    for record in records:
        key = tuple(value_text(record[a]) for a in variables)
        row = groups.setdefault(key, LeaderRow(values={a: record[a] for a in variables}, cells={}))
        seed = record.get(SEED_VARIABLE)
        if seed is not None and seed not in row.seeds:
            row.seeds.append(seed)
    for key, row in groups.items():
        mine = [r for r in records if tuple(value_text(r[a]) for a in variables) == key]
        for defense in defenses:
            cell = [r for r in mine if r["defense"] == defense]
            row.cells[defense] = {m: summarize([r[m] for r in cell]) for m in METRICS}
    rows = [groups[k] for k in sorted(groups, key=lambda k: order.index(k) if k in order else len(order))]
    return Leaderboard(run_id=run_id, workflow=tags[SWEEP_TAG], status=parent.info.status, model=model,
                       axes=axes, variables=variables, defenses=defenses, rows=rows, records=records)


def _product(lists):
    import itertools

    return list(itertools.product(*lists)) if lists else [()]


def build_leaderboard(engine, run_id: str, *, out_dir=None, log: bool = True) -> Leaderboard:
    """Collect the sweep's leaderboard, write its folder and (with ``log``) log it on the sweep's run."""
    from .leaderboard_figures import heatmap, metric_plots
    from .report import default_report_dir

    board = collect_leaderboard(engine, run_id)
    directory = Path(out_dir) if out_dir else default_report_dir(run_id)
    directory.mkdir(parents=True, exist_ok=True)
    pictures: dict[str, bytes | None] = {"heatmap.png": heatmap(board)}
    for variable in board.variables:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in board.axes[variable]):
            pictures[f"metrics_vs_{variable}.png"] = metric_plots(board, variable)
    for name, png in pictures.items():
        if png:
            (directory / name).write_bytes(png)
    write_csv(board, directory / "results.csv")
    board.directory = directory
    board.html_path = directory / "leaderboard.html"
    (directory / "leaderboard.json").write_text(json.dumps(board.to_dict(), indent=2, default=str))
    tmp = board.html_path.with_suffix(".html.tmp")
    tmp.write_text(render_html(board, pictures), encoding="utf-8")
    tmp.replace(board.html_path)
    if log:
        client = engine.mlflow_client()
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.suffix in {".html", ".png", ".json", ".csv"}:
                client.log_artifact(run_id, str(path), "report")
    return board


def write_csv(board: Leaderboard, path: Path) -> None:
    """One row per (combination, defense, seed): the swept variables, defense, CA, ASR, RA, DER, run id."""
    columns = list(board.axes) + ["defense", *METRICS, "workflow_run_id"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in board.records:
            writer.writerow({k: ("" if record.get(k) is None else record.get(k)) for k in columns})


def cell_text(stat: Stat, metric: str, *, std: bool = False) -> str:
    """``98.1 ± 0.3`` (percent, 95% CI) for rates, ``0.951 ± 0.004`` for DER; ``-`` when missing."""
    if stat.mean is None:
        return "-"
    scale, fmt = (1, "{:.3f}") if metric == "DER" else (100, "{:.1f}")
    text = fmt.format(stat.mean * scale)
    if stat.ci95 is not None:
        text += " ± " + fmt.format(stat.ci95 * scale)
    if std and stat.std is not None:
        text += " (sd " + fmt.format(stat.std * scale) + ")"
    return text


def leaderboard_table(board: Leaderboard):
    """A rich table: one row per combination, one column per defense, each cell CA / ASR / RA / DER."""
    from rich.table import Table

    n = max((len(r.seeds) for r in board.rows), default=0)
    table = Table(title=f"sweep {board.workflow}: {board.model}, mean ± 95% CI over {n} seed(s); run {board.run_id}",
                  header_style="bold", show_lines=True,
                  caption="CA clean accuracy, ASR attack success rate, RA robust accuracy (%); "
                          "DER defense effectiveness rating")
    for variable in board.variables or ["sweep"]:
        table.add_column(variable)
    for defense in board.defenses:
        table.add_column(f"defense: {defense}", justify="right")
    for row in board.rows:
        cells = []
        for defense in board.defenses:
            cell = row.cells.get(defense, {})
            cells.append("\n".join(f"{m} {cell_text(cell[m], m)}" for m in METRICS if m in cell
                                   and not (m == "DER" and defense == NO_DEFENSE)))
        label = [value_text(row.values[v]) for v in board.variables] or ["all"]
        table.add_row(*label, *cells)
    return table


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1500px;color:#222;
padding:0 1em}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.6em 0;font-size:.8em}
th,td{border:1px solid #ccc;padding:.2em .35em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th.group{background:#e6eef7}.sd{color:#777;font-size:.85em}img{max-width:100%;border:1px solid #eee}
.dim{color:#777}
"""


def render_html(board: Leaderboard, pictures: dict[str, bytes | None]) -> str:
    """The leaderboard as one HTML document (PNGs embedded as data URIs)."""
    e = html.escape
    n = max((len(r.seeds) for r in board.rows), default=0)
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>gnomon leaderboard: {e(board.workflow)}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Sweep <code>{e(board.workflow)}</code>: leaderboard</h1>",
           f"<p>Sweep run <code>{e(board.run_id)}</code>: <b>{e(board.status)}</b>. Model evaluated: "
           f"<b>{e(board.model)}</b>. Axes: " + "; ".join(f"<code>{e(k)}</code> = {e(', '.join(map(value_text, v)))}"
                                                     for k, v in board.axes.items()) + ".</p>",
           f"<p>Each cell: mean ± 95% confidence interval (t-distribution) over {n} seed(s), standard deviation "
           "in grey. CA, ASR and RA in percent.</p>"]
    vars_ = board.variables or ["sweep"]
    out.append("<div class='scroll'><table><tr>" + "".join(f"<th rowspan='2'>{e(v)}</th>" for v in vars_)
               + "".join(f"<th class='group' colspan='{3 if d == NO_DEFENSE else 4}'>defense: {e(d)}</th>"
                         for d in board.defenses) + "</tr><tr>")
    for d in board.defenses:
        out.append("".join(f"<th title='{e(METRIC_NAMES[m])}'>{m}</th>" for m in METRICS
                           if not (m == "DER" and d == NO_DEFENSE)))
    out.append("</tr>")
    for row in board.rows:
        out.append("<tr>" + "".join(f"<td>{e(value_text(row.values[v]))}</td>" for v in board.variables)
                   + ("" if board.variables else "<td>all</td>"))
        for d in board.defenses:
            for m in METRICS:
                if m == "DER" and d == NO_DEFENSE:
                    continue
                stat = row.cells.get(d, {}).get(m)
                if stat is None or stat.mean is None:
                    out.append("<td class='num'>-</td>")
                    continue
                scale, fmt = (1, "{:.3f}") if m == "DER" else (100, "{:.1f}")
                sd = "" if stat.std is None else f"<br><span class='sd'>sd {fmt.format(stat.std * scale)}</span>"
                out.append(f"<td class='num'>{e(cell_text(stat, m))}{sd}</td>")
        out.append("</tr>")
    out.append("</table></div>")
    out.append("<p class='dim'>CA: clean accuracy on the (defended) clean test set. ASR: attack success rate, "
               "among triggered images whose true class is not the target, the share classified as the target. "
               "RA: robust accuracy, accuracy on the triggered test set against the true labels. DER: "
               "BackdoorBench's defense effectiveness rating (max(0, drop of ASR) - max(0, drop of CA) + 1) / 2 "
               "against no defense, per seed, then averaged.</p>")
    titles = {"heatmap.png": "Attack settings x defense (mean over seeds)"}
    for name, png in pictures.items():
        if not png:
            continue
        title = titles.get(name) or f"Metrics against {name[len('metrics_vs_'):-4]} (bands: 95% CI)"
        out.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,"
                   f"{base64.b64encode(png).decode()}'>")
    out.append("<h2>Files</h2><p><code>results.csv</code>: one row per cell and seed (tidy); "
               "<code>leaderboard.json</code>: this table.</p>")
    out.append(f"<p class='dim'>Regenerate with <code>gnomon report {e(board.run_id)}</code>.</p></body></html>")
    return "\n".join(out)
