"""The workflow report: console table, self-contained HTML with real PNGs, artifacts on the parent run,
and `gnomon report RUN_ID` rebuilding it; on toy dataset artifacts written and read by real tasks."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest

from gnomon.core.errors import GnomonError
from gnomon.core.workflows import apply_overrides, parse_workflow, run_workflow
from gnomon.core.workflows.report import build_report, results_table
from tests import test_workflows_support as support

TOY = '''
[workflow]
name = "toy"

[vars]
clean_acc = 0.9

[steps.clean]
task = "wf_make_data"
[steps.triggered]
task = "wf_make_data"
params = { triggered = true, target_class = 2 }
[steps.triggered_defended]
task = "wf_make_data"
params = { triggered = true, target_class = 2, shift = 60 }
[steps.train]
task = "wf_emit"
params = { value = 2, label = "m", epochs = 4 }

[steps.eval_clean]
task = "wf_eval"
params = { model = "m", accuracy = "${vars.clean_acc}", load_dataset_from_mlruns = true, dataset_run_id = "${steps.clean.run_id}" }
report = { model = "toy model", data = "clean" }
[steps.eval_triggered]
task = "wf_eval"
params = { model = "m", accuracy = 0.25, load_dataset_from_mlruns = true, dataset_run_id = "${steps.triggered.run_id}" }
report = { model = "toy model", data = "triggered" }
[steps.eval_defended]
task = "wf_eval"
params = { model = "m", accuracy = 0.75, load_dataset_from_mlruns = true, dataset_run_id = "${steps.triggered_defended.run_id}" }
report = { model = "toy model", data = "triggered", defense = "darken" }
'''


@pytest.fixture
def engine(gnomon_engine_factory):
    support.CALLS.clear()
    return gnomon_engine_factory(plugins=[support])


def _png_ok(data: bytes):
    """Decode a PNG with PIL and return it as an array; it must be a real picture, not a blank."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("L"), dtype=np.float32)
    assert arr.shape[0] > 150 and arr.shape[1] > 200
    assert arr.std() > 5  # something is drawn
    return arr


def test_workflow_writes_and_logs_a_self_contained_report(engine, tmp_path):
    wf = parse_workflow(TOY)
    result = run_workflow(engine, wf, apply_overrides(wf, {"clean_acc": "0.875"}), report_dir=tmp_path / "rep")
    report = result.report
    assert report is not None and report.html_path == tmp_path / "rep" / "report.html"

    rows = {(r.model, r.defense): r for r in report.data.rows}
    assert set(rows) == {("toy model", "none"), ("toy model", "darken")}
    assert rows["toy model", "none"].clean_accuracy == pytest.approx(0.875)
    assert rows["toy model", "none"].triggered_accuracy == pytest.approx(0.25)
    assert rows["toy model", "none"].attack_success_rate == pytest.approx(0.5)  # what wf_eval computed
    assert rows["toy model", "darken"].clean_accuracy is None

    html = report.html_path.read_text()
    table = html[html.index("<h2>Results</h2>"):html.index("</table>", html.index("<h2>Results</h2>"))]
    assert re.search(r"<td>toy model</td><td>none</td><td class='num'>87\.5%</td><td class='num'>25\.0%</td>"
                     r"<td class='num'>50\.0%</td>", table)
    assert "<td>darken</td><td class='num'>-</td><td class='num'>75.0%</td>" in table
    # versions and exact params
    for lib in ("gnomon", "tensorflow", "keras", "art", "mlflow", "python"):
        assert f"<th>{lib}</th>" in html
    assert "<th>clean_acc</th><td><code>0.875</code></td>" in html
    assert f"<code>{result.by_name['clean'].run_id}</code>" in html
    assert "dataset_run_id = <code>" + result.by_name["triggered"].run_id + "</code>" in html
    # embedded PNGs decode and show something; nothing refers to outside files
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(embedded) == 3
    for b64 in embedded:
        _png_ok(base64.b64decode(b64))
    assert not re.search(r"src='(?!data:)", html)

    # the example grid reads the dataset artifacts: the triggered row differs from the clean row in the
    # trigger corner only, and the darkened row is darker
    examples = dict(report.data.examples)
    assert list(examples) == ["clean", "triggered", "triggered + darken"]
    clean, trig, dark = (examples[k][0] for k in ("clean", "triggered", "triggered + darken"))
    assert trig[8:11, 8:11].min() == 1.0 and clean[8:11, 8:11].max() < 1.0
    assert (trig[:8, :8] == clean[:8, :8]).all()
    assert dark.mean() < trig.mean() - 0.1
    assert report.data.example_captions[0] in {"class 0", "class 1"}  # never the target class 2
    assert report.data.curves["train_loss"]["train"] == [(1, 2.0), (2, 1.0), (3, 2 / 3), (4, 0.5)]

    # logged on the parent run
    client = engine.mlflow_client()
    logged = {f.path for f in client.list_artifacts(result.run_id, "report")}
    assert logged == {"report/report.html", "report/results.png", "report/examples.png",
                      "report/training_curves.png", "report/results.json"}
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert results["status"] == "FINISHED" and len(results["rows"]) == 2

    # the console table
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(results_table(report.data))
    text = console.export_text()
    assert "toy model" in text and "87.5%" in text and "50.0%" in text and "darken" in text


def test_report_is_rebuilt_from_the_store_alone(engine, tmp_path):
    wf = parse_workflow(TOY)
    result = run_workflow(engine, wf, apply_overrides(wf, {}), make_report=False)
    rebuilt = build_report(engine, result.run_id, out_dir=tmp_path / "again")
    assert [(r.model, r.defense, r.clean_accuracy) for r in rebuilt.data.rows] == \
        [("toy model", "none", 0.9), ("toy model", "darken", None)]
    assert rebuilt.data.status == "FINISHED" and rebuilt.data.workflow == "toy"
    for name in ("results.png", "examples.png", "training_curves.png"):
        _png_ok((tmp_path / "again" / name).read_bytes())


def test_example_images_from_memory_equal_those_read_from_the_tars(engine, tmp_path):
    """In the process that ran the workflow the grid comes from memory; elsewhere from the tars: same pixels."""
    import numpy as np

    from gnomon.core.datasets import artifacts

    wf = parse_workflow(TOY)
    result = run_workflow(engine, wf, apply_overrides(wf, {}), make_report=False)
    engine.store.datasets.clear()
    for step in ("clean", "triggered", "triggered_defended"):  # these toy tasks write tars by hand: read them once
        artifacts.read_dataset_artifact(engine, result.by_name[step].run_id, "data.tar", "toy")
    in_memory = build_report(engine, result.run_id, out_dir=tmp_path / "mem").data.examples
    engine.store.datasets.clear()
    from_tars = build_report(engine, result.run_id, out_dir=tmp_path / "tars").data.examples
    assert [label for label, _ in in_memory] == [label for label, _ in from_tars] and in_memory
    for (_, row_a), (_, row_b) in zip(in_memory, from_tars, strict=True):
        assert len(row_a) == len(row_b)
        for a, b in zip(row_a, row_b, strict=True):
            np.testing.assert_array_equal(a, b)


def test_report_of_a_failed_workflow_and_of_a_non_workflow_run(engine, tmp_path):
    from gnomon.core.workflows import WorkflowStepError

    wf = parse_workflow(TOY + '\n[steps.boom]\ntask = "wf_fail"\n')
    with pytest.raises(WorkflowStepError) as info:
        run_workflow(engine, wf, apply_overrides(wf, {}))
    report = build_report(engine, info.value.parent_run_id, out_dir=tmp_path / "failed", log=False)
    assert report.data.status == "FAILED"
    assert {s.name: s.step_status for s in report.data.steps}["boom"] == "failed"
    assert len(report.data.rows) == 2  # the finished evaluations are still reported

    plain = engine.run("wf_emit", {"value": 1})
    with pytest.raises(GnomonError, match="not a workflow run"):
        build_report(engine, plain.run_id, out_dir=tmp_path / "x", log=False)
    with pytest.raises(GnomonError, match="no run 'nope'"):
        build_report(engine, "nope", out_dir=tmp_path / "y", log=False)


class _Counting:
    """An MlflowClient that counts the calls of each method (how many requests a report makes)."""

    def __init__(self, client):
        self._client, self.calls = client, {}

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)
        return counted


def test_the_report_reads_the_step_runs_in_one_search_and_only_the_curves_they_recorded(engine, tmp_path,
                                                                                         monkeypatch):
    from gnomon.core.context import LOGGED_TAG

    wf = parse_workflow(TOY)
    result = run_workflow(engine, wf, apply_overrides(wf, {}), make_report=False)
    client = engine.mlflow_client()
    train = result.by_name["train"].run_id
    assert json.loads(client.get_run(train).data.tags[LOGGED_TAG]) == \
        {"curves": ["train_accuracy", "train_loss", "val_loss"], "section": False}
    evaluation = client.get_run(result.by_name["eval_clean"].run_id).data.tags
    assert json.loads(evaluation[LOGGED_TAG])["curves"] == []

    counting = _Counting(client)
    monkeypatch.setattr(engine, "mlflow_client", lambda: counting)
    report = build_report(engine, result.run_id, out_dir=tmp_path / "a", log=False)
    assert report.data.curves["train_loss"]["train"] == [(1, 2.0), (2, 1.0), (3, 2 / 3), (4, 0.5)]
    assert counting.calls.get("get_metric_history") == 3  # the train step's three curves, nothing else
    assert counting.calls.get("search_runs") == 1 and counting.calls.get("get_run", 0) <= 1  # the parent
    assert "list_artifacts" not in counting.calls  # no step logged a report section

    # a run from before the tag (or logged by hand): its metrics are probed for curves, as before
    client.delete_tag(train, LOGGED_TAG)
    counting.calls.clear()
    again = build_report(engine, result.run_id, out_dir=tmp_path / "b", log=False)
    assert again.data.curves == report.data.curves
    assert counting.calls["get_metric_history"] > 3
