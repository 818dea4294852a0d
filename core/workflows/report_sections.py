"""Report sections contributed by steps: a task that logs ``report_section.json`` gets its own part of the report.

The file holds ``{"title": str, "metrics": [[label, text], ...], "tables": [{"columns": [...],
"rows": [[...], ...]}], "figures": ["artifact/path.png", ...]}`` (figures are artifacts of the
same run). Detection tasks use it for their scores, per-class tables and pictures; any plugin
task may.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..context import SECTION_FILE  # defined with the run context, which records that a run logged it


@dataclass
class Section:
    """One step's section: title, label/value pairs, tables and PNG figures."""

    step: str
    run_id: str
    title: str
    metrics: list[list[str]] = field(default_factory=list)
    tables: list[dict[str, Any]] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)


def collect_sections(client, steps) -> list[Section]:
    """The sections of every step run that logged ``report_section.json``, in step order."""
    sections = []
    for step in steps:
        if not step.run_id or (getattr(step, "logged", None) is not None and not step.logged.get("section")):
            continue  # no run, or a run that recorded logging no section: nothing to list
        try:
            names = {a.path for a in client.list_artifacts(step.run_id)}
        except Exception:
            continue
        if SECTION_FILE not in names:
            continue
        with tempfile.TemporaryDirectory(prefix="gnomon-section-") as tmp:
            try:
                spec = json.loads(Path(client.download_artifacts(step.run_id, SECTION_FILE, tmp)).read_text())
            except Exception:
                continue
            section = Section(step=step.name, run_id=step.run_id, title=str(spec.get("title") or step.name),
                              metrics=[[str(a), str(b)] for a, b in spec.get("metrics") or []],
                              tables=list(spec.get("tables") or []))
            for path in spec.get("figures") or []:
                try:
                    section.figures.append((str(path), Path(client.download_artifacts(step.run_id, path, tmp))
                                            .read_bytes()))
                except Exception:
                    continue
        sections.append(section)
    return sections


def render_sections(sections: list[Section]) -> str:
    """HTML for the sections (empty string when there are none)."""
    if not sections:
        return ""
    e = html.escape
    out = ["<h2>Detections and repairs</h2>"]
    for s in sections:
        out.append(f"<h3>{e(s.title)} <span class='dim'>(step <code>{e(s.step)}</code>)</span></h3>")
        if s.metrics:
            out.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td class='num'>{e(v)}</td></tr>"
                                           for k, v in s.metrics) + "</table>")
        for table in s.tables:
            columns = table.get("columns") or []
            out.append("<details><summary>details</summary><table><tr>"
                       + "".join(f"<th>{e(str(c))}</th>" for c in columns) + "</tr>")
            for row in table.get("rows") or []:
                out.append("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>")
            out.append("</table></details>")
        for path, png in s.figures:
            b64 = base64.b64encode(png).decode()
            out.append(f"<p><img alt='{e(path)}' src='data:image/png;base64,{b64}'></p>")
    return "\n".join(out)
