"""The trigger x defense grid workflow (trigger_grid.toml): validated fast, run end to end on the sample (slow)."""

from __future__ import annotations

import pytest

from gnomon.core.workflows import apply_overrides, find_workflow, validate_workflow
from gnomon.core.workflows.refs import step_dependencies

TRIGGERS = ("pattern", "blended", "sig", "warp")
DEFENSES = ("spatial_smoothing", "jpeg_compression", "gaussian_augmentation")


def test_grid_validates_and_pairs_every_defense_with_its_triggers_model_and_data(gnomon_engine):
    workflow = find_workflow(gnomon_engine, "trigger_grid")
    validate_workflow(gnomon_engine, workflow, apply_overrides(workflow, {}), preflight=False)
    validate_workflow(gnomon_engine, workflow, apply_overrides(workflow, {"warp_strength": "1.0", "epochs": "1"}),
                      preflight=False)
    defend = workflow.expansions("defend")
    assert len(defend) == len(TRIGGERS) * 2 * len(DEFENSES)
    for step in defend:
        trigger = step.matrix["trigger"]
        deps = set(step_dependencies(step.params))
        assert f"train[trigger={trigger}]" in deps
        if step.matrix["data"] == "triggered":
            assert f"poison[trigger={trigger},split=test]" in deps
    for step in workflow.expansions("detect"):
        trigger = step.matrix["trigger"]
        assert set(step_dependencies(step.params)) == {f"train[trigger={trigger}]", f"poison[trigger={trigger},split=train]"}
    assert {s.task for s in workflow.expansions("detect")} == {"activation_clustering", "spectral_signatures"}
    for trigger in TRIGGERS:
        train = workflow.step(f"train[trigger={trigger}]")
        assert step_dependencies(train.params) == [f"poison[trigger={trigger},split=train]"]
        assert workflow.step(f"poison[trigger={trigger},split=train]").params["trigger"] == trigger


def test_a_bad_trigger_option_in_the_grid_is_refused_before_any_run(gnomon_engine):
    from gnomon.core.workflows import WorkflowValidationError

    workflow = find_workflow(gnomon_engine, "trigger_grid")
    with pytest.raises(WorkflowValidationError) as info:
        validate_workflow(gnomon_engine, workflow, apply_overrides(workflow, {"warp_grid_size": "1"}),
                          preflight=False)
    assert {p.step for p in info.value.problems} == {"poison[trigger=warp,split=test]",
                                                      "poison[trigger=warp,split=train]"}
    assert "grid_size" in str(info.value)


@pytest.mark.slow
def test_grid_end_to_end_on_the_mnist_sample(gnomon_engine, tmp_path):
    from gnomon.core.workflows import run_workflow

    workflow = find_workflow(gnomon_engine, "trigger_grid")
    # a fraction of an epoch: the test is about the 46 steps chaining and reporting, not about the numbers
    variables = apply_overrides(workflow, {"epochs": "0.3", "batch_size": "32"})
    result = run_workflow(gnomon_engine, workflow, variables, report_dir=tmp_path / "report")
    assert {s.status for s in result.steps} == {"ran"}
    rows = {(r.model, r.defense): r for r in result.report.data.rows}
    shown = {"pattern": "pattern trigger", "blended": "blended trigger", "sig": "SIG trigger", "warp": "warp trigger"}
    defenses = ("none", "spatial smoothing", "jpeg compression", "gaussian noise")
    assert set(rows) == {(shown[t], d) for t in TRIGGERS for d in defenses} | {("clean model", "none")}, sorted(rows)
    for trigger in TRIGGERS:
        for defense in defenses:
            row = rows[shown[trigger], defense]
            assert 0.0 <= row.attack_success_rate <= 1.0 and 0.0 <= row.clean_accuracy <= 1.0
    assert rows["clean model", "none"].clean_accuracy > 0.1
    assert (tmp_path / "report" / "report.html").is_file()
