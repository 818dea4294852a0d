"""The three shipped demo workflows: validated fast (schema level, references, report labels) and the
baseline run end to end on the shipped MNIST sample with one epoch (slow)."""

from __future__ import annotations

import pytest

from gnomon.core.workflows import apply_overrides, find_workflow, validate_workflow
from gnomon.core.workflows.refs import step_dependencies

DEMOS = ("baseline", "adversarial_embedding", "clean_label")


@pytest.fixture
def engine(gnomon_engine):
    return gnomon_engine


@pytest.mark.parametrize("name", DEMOS)
def test_demo_validates_and_reports_both_models_under_every_defense(engine, name):
    workflow = find_workflow(engine, name)
    assert workflow.name == name and workflow.description
    validate_workflow(engine, workflow, apply_overrides(workflow, {}), preflight=False)
    # every override of a variable's type is still accepted
    validate_workflow(engine, workflow, apply_overrides(workflow, {"epochs": "1", "seed": "3"}), preflight=False)

    shown = workflow.report.get("labels", {})
    labelled = {(s.report["model"], s.report["data"], shown.get(s.report.get("defense", "none"), s.report.get("defense", "none")))
                for s in workflow.steps if s.report}
    defenses = {"none", "spatial smoothing", "jpeg compression", "gaussian noise"}
    expected = {(m, d, x) for m in ("clean model", "poisoned model") for d in ("clean", "triggered") for x in defenses}
    assert labelled == expected
    tasks = {s.task for s in workflow.steps}
    assert {"train", "infer", "gen_poison_test_data", "spatial_smoothing", "jpeg_compression",
            "gaussian_augmentation"} <= tasks
    attack = {"baseline": "gen_poison_test_data", "adversarial_embedding": "gen_poison_model",
              "clean_label": "gen_poison_clean_data"}[name]
    assert attack in tasks
    # the poisoned model really comes from the attack
    poisoned = "poison_model" if name == "adversarial_embedding" else "train[model=poisoned]"
    assert poisoned in step_dependencies(workflow.step("infer[model=poisoned,data=triggered]").params)
    # each clean-model evaluation of defended data is paired with the defense step of the same axes
    for step in workflow.expansions("infer_defended"):
        paired = f"defend[data={step.matrix['data']},defense={step.matrix['defense']}]"
        assert paired in step_dependencies(step.params)
    if name == "clean_label":
        proxy = workflow.step("train_proxy")
        assert proxy.params["apply_defense"] is True
        assert step_dependencies(workflow.step("poison_train").params) == ["train_proxy"]
        assert step_dependencies(workflow.step("train[model=poisoned]").params) == ["poison_train"]


@pytest.mark.parametrize("name", DEMOS)
def test_a_sweep_over_the_attack_shares_every_step_that_does_not_use_the_poisoned_data(engine, name):
    """The defenses' transforms use no model: across poison fractions they are one step per seed, like the
    clean model and its evaluations; only the poisoned data, the poisoned model and its evaluations differ."""
    from gnomon.core.workflows.sweep import parse_sweep, plan_sweep

    workflow = find_workflow(engine, name)
    matrix = parse_sweep(workflow, ["poison_fraction=0.05,0.1", "seed=0,1"], {})
    sweep = plan_sweep(engine, workflow, apply_overrides(workflow, {}), matrix, preflight=False)
    by_name: dict[str, set[str]] = {}
    for combination in sweep.combinations:
        for planned in combination.plan.steps:
            by_name.setdefault(planned.name, set()).add(planned.key)
    for step, keys in by_name.items():
        poisoned = step in ("poison[split=train]", "poison_train", "train[model=poisoned]", "poison_model") or \
            "model=poisoned" in step
        assert len(keys) == (4 if poisoned else 2), step  # one per combination, or one per seed
    assert all(len(by_name[s.name]) == 2 for s in workflow.expansions("defend"))


def test_a_typo_in_a_demo_override_names_the_step(engine):
    from gnomon.core.workflows import WorkflowValidationError

    workflow = find_workflow(engine, "baseline")
    with pytest.raises(WorkflowValidationError) as info:
        validate_workflow(engine, workflow, apply_overrides(workflow, {"model_architecture": "le_nett"}),
                          preflight=False)
    steps = {p.step for p in info.value.problems}
    assert {"train[model=clean]", "poison[split=test]", "train[model=poisoned]"} <= steps
    assert not any(s.startswith("defend") for s in steps)  # the defenses use no model, hence no architecture
    assert "Did you mean 'le_net'" in str(info.value)


@pytest.mark.slow
def test_baseline_end_to_end_on_the_mnist_sample(engine, tmp_path):
    """One epoch on the shipped 1,000/300 MNIST sample (GNOMON_MNIST_SOURCE from conftest)."""
    from gnomon.core.workflows import run_workflow

    workflow = find_workflow(engine, "baseline")
    variables = apply_overrides(workflow, {"epochs": "1", "batch_size": "32"})
    result = run_workflow(engine, workflow, variables, report_dir=tmp_path / "report")
    assert [s.status for s in result.steps] == ["ran"] * len(workflow.steps)
    rows = {(r.model, r.defense): r for r in result.report.data.rows}
    assert len(rows) == 8
    for row in rows.values():
        for value in (row.clean_accuracy, row.triggered_accuracy, row.attack_success_rate):
            assert value is not None and 0.0 <= value <= 1.0
    clean, poisoned = rows["clean model", "none"], rows["poisoned model", "none"]
    assert clean.clean_accuracy > 0.3  # a real model, even after one epoch on 900 images
    assert poisoned.attack_success_rate > clean.attack_success_rate  # the backdoor took
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    # resuming the finished workflow redoes nothing
    again = run_workflow(engine, workflow, variables, resume=True, make_report=False)
    assert {s.status for s in again.steps} == {"cached"}
    assert [s.run_id for s in again.steps] == [s.run_id for s in result.steps]
