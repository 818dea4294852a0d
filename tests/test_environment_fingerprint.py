"""Every run records the environment that decides its numbers; the workflow report shows it."""

from __future__ import annotations

import pytest

from gnomon.core import environment
from gnomon.core.workflows import apply_overrides, parse_workflow, run_workflow
from tests import test_workflows_support as support
from tests.test_report_html import TOY

KEYS = {"cpu", "isa", "cpus", "tensorflow", "keras", "art", "numpy", "python", "platform", "onednn", "threads", "id"}


def test_fingerprint_has_every_field_and_its_id_follows_the_settings():
    fp = environment.fingerprint({})
    assert set(fp) == KEYS and all(fp.values())
    from importlib.metadata import version

    assert fp["tensorflow"] == version("tensorflow") and fp["art"] == version("adversarial-robustness-toolbox")
    assert environment.fingerprint({})["id"] == fp["id"]  # stable
    off = environment.fingerprint({"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert off["onednn"] == "off" and off["id"] != environment.fingerprint({"TF_ENABLE_ONEDNN_OPTS": "1"})["id"]
    threads = environment.fingerprint({"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"})["threads"]
    assert "omp=1" in threads


@pytest.fixture
def engine(gnomon_engine_factory):
    support.CALLS.clear()
    return gnomon_engine_factory(plugins=[support])


def test_every_run_and_the_report_carry_the_fingerprint(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    wf = parse_workflow(TOY)
    result = run_workflow(engine, wf, apply_overrides(wf, {}), report_dir=tmp_path / "rep")
    client = engine.mlflow_client()
    expected = environment.fingerprint()
    for run_id in [result.run_id] + [s.run_id for s in result.steps]:
        recorded = environment.from_tags(client.get_run(run_id).data.tags)
        assert recorded["onednn"] == "off"
        assert {k: v for k, v in recorded.items() if k not in ("threads", "id")} == \
            {k: v for k, v in expected.items() if k not in ("threads", "id")}

    html = result.report.html_path.read_text()
    section = html[html.index("<h2>Environment</h2>"):html.index("<h2>Versions</h2>")]
    for key in ("cpu", "isa", "tensorflow", "keras", "art", "numpy", "onednn", "threads", "id"):
        assert f"<th>{key}</th>" in section
    assert f"<code>{expected['cpu']}</code>" in section and "<th>onednn</th><td><code>off</code>" in section
    assert "other environment" not in section  # every step ran here
