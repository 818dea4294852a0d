"""gnomon-feature-squeezing: discovery, the defense, the task (with and without a model), the mlp model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gnomon_feature_squeezing.defense import feature_squeezing

from gnomon.core.errors import ParamValidationError
from gnomon.core.plugins import load_plugins


def _levels(bits: int) -> int:
    return 2 ** bits


def test_discovered_through_its_entry_point_with_everything_it_provides():
    plugins = load_plugins(environ={})
    info = plugins.infos["feature_squeezing"]
    assert (info.source, info.broken, info.api_version) == ("entry point", False, "1")
    assert info.warnings == []  # no heavy import at import time
    assert plugins.registry.provided_by("feature_squeezing") == {
        "tasks": ["feature_squeezing"], "models": ["mlp"], "defenses": ["feature_squeezing"]}
    assert plugins.registry.defenses["feature_squeezing"].kind == "preprocessor"


@pytest.mark.parametrize("bits", [1, 3, 5])
def test_defense_reduces_to_bit_depth_levels_as_the_formula_says(bits):
    x = np.random.default_rng(bits).random((4, 6, 6, 1), dtype=np.float32)
    squeezed, y = feature_squeezing(bits)(x)
    assert y is None
    top = _levels(bits) - 1
    np.testing.assert_allclose(squeezed, np.rint(x * top) / top, atol=1e-6)
    assert len(np.unique(squeezed)) <= _levels(bits)


def test_defense_rejects_bad_options():
    with pytest.raises(ValueError, match="bit_depth must be an integer from 1 to 64"):
        feature_squeezing(0)
    with pytest.raises(ValueError, match="never be applied"):
        feature_squeezing(4, apply_fit=False, apply_predict=False)
    with pytest.raises(ValueError, match="clip_values"):
        feature_squeezing(4, clip_values=(1.0, 0.0))


def test_task_parameters_are_validated(gnomon_engine):
    with pytest.raises(ParamValidationError) as excinfo:
        gnomon_engine.validate("feature_squeezing", {
            "feature_squeezing_bit_depth": 0, "model_architecture": "no_such_net", "bogus": 1})
    errors = excinfo.value.errors
    assert {"feature_squeezing_bit_depth", "model_architecture", "bogus"} <= set(errors)
    with pytest.raises(ParamValidationError, match="never be applied"):
        gnomon_engine.validate("feature_squeezing", {"feature_squeezing_apply_predict": False})
    with pytest.raises(ParamValidationError) as excinfo:
        gnomon_engine.validate("feature_squeezing", {"model": "never_registered", "model_architecture": "mlp"})
    assert "never_registered" in excinfo.value.errors["model"][0]


def test_task_squeezes_a_folder_into_a_dataset_artifact(gnomon_engine, gnomon_image_folder):
    from gnomon.core.datasets import load_image_folder, read_dataset_artifact

    folder = gnomon_image_folder(n_classes=2, per_class=5, size=(6, 6))
    result = gnomon_engine.run("feature_squeezing", {"data_dir": str(folder), "feature_squeezing_bit_depth": 2})
    out = read_dataset_artifact(gnomon_engine, result.run_id, result.outputs["dataset_tar_name"],
                                result.outputs["dataset_name"])
    clean = load_image_folder(folder)
    expected = np.rint(np.rint(clean.x * 3) / 3 * 255) / 255  # 2 bits, then stored as 8-bit PNG
    np.testing.assert_allclose(out.x, expected, atol=1e-6)
    assert sorted(out.files) == sorted(clean.files)
    assert out.metadata["defense"] == "feature_squeezing"
    assert out.metadata["defenses"][-1]["options"]["bit_depth"] == 2
    diff = np.abs(out.x - clean.x).reshape(len(out), -1)
    assert result.metrics["linf_max"] == pytest.approx(diff.max(), abs=1e-6)
    assert result.metrics["n_defended"] == 10 and "accuracy" not in result.metrics


def test_chained_runs_keep_metadata_and_stack_defenses(gnomon_engine, gnomon_image_folder):
    from gnomon.core.datasets import read_dataset_artifact

    folder = gnomon_image_folder(n_classes=2, per_class=3)
    first = gnomon_engine.run("feature_squeezing", {"data_dir": str(folder), "feature_squeezing_bit_depth": 4})
    second = gnomon_engine.run("feature_squeezing", {
        "load_dataset_from_mlruns": True, "dataset_run_id": first.run_id, "feature_squeezing_bit_depth": 1,
        "dataset_tar_name": first.outputs["dataset_tar_name"], "dataset_name": first.outputs["dataset_name"]})
    out = read_dataset_artifact(gnomon_engine, second.run_id, second.outputs["dataset_tar_name"], "adv_testing")
    assert [d["options"]["bit_depth"] for d in out.metadata["defenses"]] == [4, 1]
    assert set(np.unique(out.x)) <= {0.0, 1.0}


def test_task_without_model_never_imports_tensorflow(tmp_path, gnomon_image_folder):
    folder = gnomon_image_folder()
    code = (
        "import sys, json\n"
        "from gnomon.core.engine import Engine\n"
        "r = Engine(show_progress=False).run('feature_squeezing', {'data_dir': sys.argv[1]})\n"
        "print(json.dumps({'status': r.status, 'heavy': sorted(m for m in ('tensorflow', 'keras', 'torch') "
        "if m in sys.modules)}))\n"
    )
    env = {**os.environ, "GNOMON_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"status": "FINISHED", "heavy": []}


def test_mlp_is_accepted_by_every_model_architecture_parameter(gnomon_engine, gnomon_engine_factory):
    from gnomon.core.fields import RegistryName

    tasks = [t.name for t in gnomon_engine.tasks()
             if isinstance(t.schema().fields.get("model_architecture"), RegistryName)]
    assert {"train", "spatial_smoothing", "feature_squeezing"} <= set(tasks)
    for name in tasks:
        assert _accepts(gnomon_engine, name), name
    without = gnomon_engine_factory()  # builtins only: 'mlp' unknown
    assert not _accepts(without, "train")


def _accepts(engine, task) -> bool:
    """Whether ``model_architecture=mlp`` passes validation (other missing parameters do not matter)."""
    try:
        engine.validate(task, {"model_architecture": "mlp"}, preflight=False)
    except ParamValidationError as exc:
        return "model_architecture" not in exc.errors
    return True


def test_mlp_builds_for_any_input_shape():
    from gnomon_feature_squeezing.models import mlp

    model = mlp((12, 10, 3), 4)
    assert tuple(model.outputs[0].shape) == (None, 4)
    probs = model(np.zeros((2, 12, 10, 3), dtype=np.float32)).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_with_a_trained_mlp_on_poisoned_mnist(gnomon_engine, mnist_source):
    """train (mlp) -> gen_poison_test_data -> feature_squeezing with the model: accuracy and ASR logged."""
    trained = gnomon_engine.run("train", {"model_architecture": "mlp", "epochs": 2, "register_model": True,
                                          "validation_split": 0.0, "seed": 1})
    model = f"{trained.outputs['model_name']}/{trained.outputs['model_version']}"
    poisoned = gnomon_engine.run("gen_poison_test_data", {"target_class": 0, "poison_fraction": 0.5, "seed": 2})
    source = {"load_dataset_from_mlruns": True, "dataset_run_id": poisoned.run_id,
              "dataset_tar_name": poisoned.outputs.get("dataset_tar_name", "adversarial_poison.tar.gz"),
              "dataset_name": poisoned.outputs.get("dataset_name", "adv_poison_data")}
    same = gnomon_engine.run("feature_squeezing", {**source, "model": model, "model_architecture": "mlp",
                                                   "feature_squeezing_bit_depth": 8})
    squeezed = gnomon_engine.run("feature_squeezing", {**source, "model": model, "feature_squeezing_bit_depth": 1})
    for result in (same, squeezed):
        for key in ("accuracy", "attack_success_rate", "undefended_accuracy", "undefended_attack_success_rate"):
            assert 0.0 <= result.metrics[key] <= 1.0, key
    # 8 bits on 8-bit images changes nothing: same numbers as undefended
    assert same.metrics["l2_max"] == 0.0
    assert same.metrics["accuracy"] == pytest.approx(same.metrics["undefended_accuracy"])
    assert same.metrics["attack_success_rate"] == pytest.approx(same.metrics["undefended_attack_success_rate"])
    assert squeezed.metrics["linf_max"] > 0.1
    assert same.metrics["undefended_accuracy"] > 0.5  # the mlp learned something from 1,000 images
