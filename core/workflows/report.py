"""The results report of a workflow: a console table and a self-contained HTML file (PNGs embedded).

:func:`build_report` reads everything back from the tracking store (see
:mod:`.report_data`), writes ``report.html`` plus the PNGs and ``results.json`` into a
folder (default ``$GNOMON_HOME/reports/<run id>``) and logs them under ``report/`` on
the workflow's parent run. :func:`results_table` is the rich table the CLI prints.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .report_data import ReportData, ResultRow, collect
from .report_figures import curves_chart, example_grid, results_chart
from .report_sections import render_sections


@dataclass
class Report:
    """A written report: its folder, the HTML file and the data it shows."""

    directory: Path
    html_path: Path
    data: ReportData
    artifact_uri: str | None = None


def default_report_dir(run_id: str) -> Path:
    from ..tracking import gnomon_home

    return gnomon_home() / "reports" / run_id


def build_report(engine, run_id: str, *, out_dir=None, log: bool = True, n_examples: int = 8) -> Report:
    """Write the report of workflow run ``run_id`` and (with ``log``) log it on that run."""
    data = collect(engine, run_id, n_examples=n_examples)
    directory = Path(out_dir) if out_dir else default_report_dir(run_id)
    directory.mkdir(parents=True, exist_ok=True)
    pictures = {
        "results.png": results_chart(data.rows),
        "examples.png": example_grid(data.examples, data.example_captions),
        "training_curves.png": curves_chart(data.curves),
    }
    for name, png in pictures.items():
        path = directory / name
        if png:
            path.write_bytes(png)
        elif path.exists():
            path.unlink()
    (directory / "results.json").write_text(json.dumps(
        {"run_id": data.run_id, "workflow": data.workflow, "status": data.status,
         "rows": [asdict(r) for r in data.rows]}, indent=2))
    html_path = directory / "report.html"
    tmp = html_path.with_suffix(".html.tmp")
    tmp.write_text(render_html(data, pictures), encoding="utf-8")
    tmp.replace(html_path)
    report = Report(directory=directory, html_path=html_path, data=data)
    if log:
        client = engine.mlflow_client()
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.suffix in {".html", ".png", ".json"}:
                client.log_artifact(run_id, str(path), "report")
        report.artifact_uri = f"runs:/{run_id}/report/report.html"
    return report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def table_rows(rows: list[ResultRow]) -> list[list[str]]:
    """The table as text: model, defense, CA, RA, ASR, DER."""
    return [[r.model, r.defense, _pct(r.clean_accuracy), _pct(r.triggered_accuracy), _pct(r.attack_success_rate),
             "-" if r.defense_effectiveness is None else f"{r.defense_effectiveness:.3f}"]
            for r in rows]


TABLE_COLUMNS = ["model", "defense", "clean acc. (CA)", "triggered acc. (RA)", "ASR", "DER"]
TABLE_NOTE = ("CA (clean accuracy): accuracy on the clean test set (defended, if a defense is named); RA (robust "
              "accuracy): accuracy on the triggered test set against the true labels; ASR (attack success rate): "
              "among triggered images whose true class is not the target, the fraction classified as the target; "
              "DER (BackdoorBench's defense effectiveness rating): (max(0, drop of ASR) - max(0, drop of CA) + 1) / 2 "
              "against the same model without defense (1: backdoor removed at no cost, 0.5: no change).")


def results_table(data: ReportData):
    """A rich Table of the results (one row per model and defense)."""
    from rich.table import Table

    table = Table(title=f"workflow {data.workflow}: run {data.run_id} {data.status}", header_style="bold",
                  caption="CA = clean accuracy, RA = robust (triggered) accuracy, ASR = attack success rate, "
                          "DER = defense effectiveness rating")
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "defense") else "right")
    previous = None
    for row in table_rows(data.rows):
        if previous is not None and row[0] != previous:
            table.add_section()
        previous = row[0]
        table.add_row(*row)
    return table


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h3{font-size:1.05em;margin-top:1.2em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee}code{font-size:.9em}.dim{color:#777}
details{margin:.3em 0}
"""


def render_environment(data: ReportData) -> str:
    """The environment that decides the numbers (see :mod:`gnomon.core.environment`), and whether steps differ."""
    e = html.escape
    if not data.environment:
        return "<h2>Environment</h2><p class='dim'>Not recorded (a run made before gnomon recorded it).</p>"
    out = ["<h2>Environment</h2>",
           "<p class='dim'>The same seed gives bit-identical numbers only with the same environment "
           "(<code>gnomon.env.id</code>); elsewhere expect differences of the order of the seed-to-seed spread.</p>",
           "<table>"]
    for key, value in data.environment.items():
        out.append(f"<tr><th>{e(key)}</th><td><code>{e(value)}</code></td></tr>")
    out.append("</table>")
    others = sorted({s.environment.get("id", "") for s in data.steps if s.environment}
                    - {data.environment.get("id", ""), ""})
    if others:
        steps = [s.name for s in data.steps if s.environment.get("id", "") in others]
        out.append(f"<p><b>Steps ran in {len(others)} other environment(s)</b> ({e(', '.join(others))}): "
                   f"{e(', '.join(steps))}.</p>")
    return "\n".join(out)


def render_html(data: ReportData, pictures: dict[str, bytes | None]) -> str:
    """The whole report as one HTML document with the PNGs embedded as data URIs."""
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>gnomon report: {e(data.workflow)}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Workflow <code>{e(data.workflow)}</code></h1>",
           f"<p>Parent run <code>{e(data.run_id)}</code> in experiment <code>{e(data.experiment)}</code>: "
           f"<b>{e(data.status)}</b>"
           + (f", {data.wall_time_s:.0f} s wall time" if data.wall_time_s else "") + ".</p>"]
    out.append("<h2>Results</h2>")
    if data.rows:
        out.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in TABLE_COLUMNS) + "</tr>")
        for row in table_rows(data.rows):
            out.append("<tr>" + "".join(f"<td>{e(v)}</td>" if i < 2 else f"<td class='num'>{e(v)}</td>"
                                        for i, v in enumerate(row)) + "</tr>")
        out.append("</table>")
        out.append(f"<p class='dim'>{e(TABLE_NOTE)}</p>")
    else:
        out.append("<p>No evaluation step carries report labels (model, data, defense).</p>")
    for name, title in (("results.png", "Attack success and clean accuracy per defense"),
                        ("examples.png", "Example images"), ("training_curves.png", "Training curves")):
        png = pictures.get(name)
        out.append(f"<h2>{e(title)}</h2>")
        if png:
            b64 = base64.b64encode(png).decode()
            out.append(f"<img alt='{e(title)}' src='data:image/png;base64,{b64}'>")
        else:
            out.append("<p class='dim'>Nothing to show.</p>")
    out.append(render_sections(data.sections))
    for note in data.notes:
        out.append(f"<p class='dim'>{e(note)}</p>")
    out.append(render_environment(data))
    out.append("<h2>Versions</h2><table>")
    for key, value in sorted(data.versions.items()):
        out.append(f"<tr><th>{e(key)}</th><td>{e(str(value))}</td></tr>")
    out.append("</table>")
    out.append("<h2>Workflow variables</h2>")
    if data.variables:
        out.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>"
                                       for k, v in sorted(data.variables.items())) + "</table>")
    else:
        out.append("<p class='dim'>None.</p>")
    out.append("<h2>Steps and exact parameters</h2><table><tr><th>#</th><th>step</th><th>task</th><th>status</th>"
               "<th>run id</th><th>time</th><th>parameters</th></tr>")
    for i, step in enumerate(data.steps, 1):
        params = "".join(f"{e(k)} = <code>{e(v)}</code><br>" for k, v in sorted(step.params.items()))
        duration = "" if step.duration_s is None else f"{step.duration_s:.1f} s"
        out.append(f"<tr><td>{i}</td><td>{e(step.name)}</td><td>{e(step.task)}</td>"
                   f"<td>{e(step.step_status)}</td><td><code>{e(step.run_id or '')}</code></td>"
                   f"<td class='num'>{duration}</td><td><details><summary>{len(step.params)} params</summary>"
                   f"{params}</details></td></tr>")
    out.append("</table>")
    out.append("<p class='dim'>Regenerate with <code>gnomon report " + e(data.run_id) + "</code>.</p>")
    out.append("</body></html>")
    return "\n".join(out)
