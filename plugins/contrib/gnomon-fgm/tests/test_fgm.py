"""gnomon-fgm: discovery, parameter checks, and real FGM attacks on a model trained on real MNIST."""

from __future__ import annotations

import numpy as np
import pytest

from gnomon.core.errors import ParamValidationError
from gnomon.core.plugins import load_plugins

Q = 1 / 255  # the artifact stores 8-bit values: distances may move by up to one step


def _attack(engine, model, **params):
    return engine.run("fgm", {"model": model, "max_samples": 100, **params})


def test_discovered_through_its_entry_point():
    plugins = load_plugins(environ={})
    info = plugins.infos["fgm"]
    assert (info.source, info.broken, info.api_version, info.warnings) == ("entry point", False, "1", [])
    assert plugins.registry.provided_by("fgm") == {"tasks": ["fgm"]}
    assert plugins.registry.tasks["fgm"].category == "attack"


def test_parameters_are_validated_before_running(gnomon_engine):
    def errors(**params):
        with pytest.raises(ParamValidationError) as excinfo:
            gnomon_engine.validate("fgm", {"model": "m", **params}, preflight=False)
        return excinfo.value.errors

    assert "target_class" in errors(targeted=True)
    assert "target_class" in errors(target_class=2)
    assert {"norm", "eps", "eps_step"} <= set(errors(norm="3", eps=0, eps_step=-1))
    assert "model" in errors(model="bad/ref/x")
    with pytest.raises(ParamValidationError) as excinfo:
        gnomon_engine.validate("fgm", {})
    assert "model" in excinfo.value.errors


@pytest.mark.slow  # trains a model once per session (~20 s), then attacks it
def test_preflight_checks_the_model(fgm_engine, trained_home):
    model = trained_home["model"]
    other = "shallow_net" if trained_home["architecture"] != "shallow_net" else "le_net"
    with pytest.raises(ParamValidationError) as excinfo:
        fgm_engine.validate("fgm", {"model": model, "model_architecture": other, "targeted": True,
                                    "target_class": 10})
    assert f"built as '{trained_home['architecture']}'" in excinfo.value.errors["model_architecture"][0]
    assert "must be below 10" in excinfo.value.errors["target_class"][0]
    with pytest.raises(ParamValidationError, match="no registered model named 'missing'"):
        fgm_engine.validate("fgm", {"model": "missing"})


@pytest.mark.slow  # trains a model once per session (~20 s), then attacks it
def test_untargeted_linf_attack_writes_adversarial_dataset(fgm_engine, trained_home):
    from gnomon.core.datasets import read_dataset_artifact

    eps = 0.15
    result = _attack(fgm_engine, trained_home["model"], eps=eps, seed=4)
    m = result.metrics
    assert eps - Q <= m["linf_max"] <= eps + Q and m["linf_mean"] <= m["linf_max"]
    assert m["clean_n_samples"] == 100 == m["adv_n_samples"]
    assert m["clean_accuracy"] > 0.5
    assert m["adv_accuracy"] < m["clean_accuracy"] - 0.2
    assert 0.3 < m["evasion_success_rate"] <= 1.0
    adv = read_dataset_artifact(fgm_engine, result.run_id, result.outputs["dataset_tar_name"],
                                result.outputs["dataset_name"])
    assert adv.x.shape == (100, 28, 28, 1) and adv.metadata["attack"]["eps"] == eps
    assert "target_class" not in adv.metadata
    assert result.outputs["dataset_tar_name"] == "testing_adversarial_fgm.tar.gz"


@pytest.mark.slow  # trains a model once per session (~20 s), then attacks it
def test_l2_attack_bounds_the_l2_norm(fgm_engine, trained_home):
    eps = 1.5
    m = _attack(fgm_engine, trained_home["model"], eps=eps, norm="2", seed=4).metrics
    assert m["l2_max"] <= eps + 28 * Q  # quantisation adds at most half a step on 784 pixels
    assert m["l2_mean"] > eps / 2
    assert m["linf_max"] < 1.0


@pytest.mark.slow  # trains a model once per session (~20 s), then attacks it
def test_targeted_attack_marks_every_image_and_reports_success(fgm_engine, trained_home):
    from gnomon.core.datasets import read_dataset_artifact
    from gnomon.core.models import evaluate, load_registered_model

    result = _attack(fgm_engine, trained_home["model"], eps=0.25, targeted=True, target_class=3, seed=5)
    rate = result.metrics["adv_attack_success_rate"]
    assert 0.3 < rate <= 1.0
    adv = read_dataset_artifact(fgm_engine, result.run_id, result.outputs["dataset_tar_name"], "adv_testing")
    assert adv.metadata["target_class"] == 3 and adv.poisoned_mask().all()
    again = evaluate(load_registered_model(fgm_engine, trained_home["model"]), adv)
    assert again["attack_success_rate"] == pytest.approx(rate)


@pytest.mark.slow  # trains a model once per session (~20 s), then attacks it
def test_same_seed_same_examples(fgm_engine, trained_home):
    runs = [_attack(fgm_engine, trained_home["model"], eps=0.1, num_random_init=1, seed=s) for s in (9, 9, 10)]
    first, again, other = (r.metrics["l2_mean"] for r in runs)
    assert first == again
    assert first != other


@pytest.mark.slow  # trains a model once per session (~20 s), then attacks it
def test_minimal_search_uses_smaller_perturbations(fgm_engine, trained_home):
    m = _attack(fgm_engine, trained_home["model"], eps=0.3, eps_step=0.05, minimal=True, seed=4).metrics
    assert m["linf_max"] <= 0.3 + Q
    assert m["linf_mean"] < m["linf_max"]  # many images fall for less than the full eps
    full = _attack(fgm_engine, trained_home["model"], eps=0.3, seed=4).metrics
    assert m["l2_mean"] < full["l2_mean"]
    assert np.isclose(full["linf_mean"], full["linf_max"], atol=Q)
