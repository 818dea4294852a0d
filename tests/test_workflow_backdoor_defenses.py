"""The backdoor_defenses workflow: validated fast, and run end to end on the shipped MNIST sample (slow)."""

from __future__ import annotations

import pytest

from gnomon.core.workflows import apply_overrides, find_workflow, validate_workflow
from gnomon.core.workflows.refs import step_dependencies

QUICK = {"epochs": "1", "batch_size": "32", "nc_steps": "2", "nc_n_validation": "200", "nc_n_mitigation": "300",
         "strip_n_inputs": "150", "strip_num_samples": "8"}


def test_backdoor_defenses_validates_and_retrains_on_each_cleaned_set(gnomon_engine):
    workflow = find_workflow(gnomon_engine, "backdoor_defenses")
    validate_workflow(gnomon_engine, workflow, apply_overrides(workflow, QUICK), preflight=False)
    tasks = {s.task for s in workflow.steps}
    assert {"activation_clustering", "spectral_signatures", "strip", "neural_cleanse"} <= tasks
    for detector in ("activation_clustering", "spectral_signatures"):
        assert step_dependencies(workflow.step(f"retrain_{detector}").params) == [detector]
        assert "poison_train" in step_dependencies(workflow.step(detector).params)
    assert workflow.step("neural_cleanse").params["mitigation"] == "unlearning"
    labelled = {s.report.get("defense") for s in workflow.steps if s.report}
    assert {"activation clustering + retraining", "spectral signatures + retraining",
            "neural cleanse unlearning"} <= labelled


@pytest.mark.slow
def test_backdoor_defenses_end_to_end_on_the_mnist_sample(gnomon_engine, tmp_path):
    from gnomon.core.workflows import run_workflow

    workflow = find_workflow(gnomon_engine, "backdoor_defenses")
    result = run_workflow(gnomon_engine, workflow, apply_overrides(workflow, QUICK), report_dir=tmp_path / "r")
    assert {s.status for s in result.steps} == {"ran"}
    data = result.report.data
    titles = [s.title for s in data.sections]
    assert titles == ["Neural Cleanse with unlearning", "activation clustering", "spectral signatures", "STRIP"]
    rows = {(r.model, r.defense): r for r in data.rows}
    for defense in ("activation clustering + retraining", "spectral signatures + retraining",
                    "neural cleanse unlearning"):
        row = rows["poisoned model", defense]
        assert row.clean_accuracy is not None and row.attack_success_rate is not None
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Detections and repairs" in html and "F1" in html and "ROC AUC" in html
    # results chart, examples, curves, plus one picture per detector section
    assert html.count("data:image/png;base64,") == 3 + 4
