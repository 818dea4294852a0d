"""check_model: the one "model reference exists and fits the params" check, on a real registry."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def engine_with_model(gnomon_engine_factory):
    import keras
    import mlflow
    import mlflow.keras

    engine = gnomon_engine_factory()
    experiment_id = engine.ensure_tracking()
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3)])
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.keras.log_model(model, name="model", registered_model_name="tiny", pip_requirements=[])
    client = engine.mlflow_client()
    version = str(info.registered_model_version)
    client.set_model_version_tag("tiny", version, "gnomon.model_architecture", "le_net")
    client.set_model_version_tag("tiny", version, "gnomon.class_names", json.dumps(["a", "b", "c"]))
    return engine


def test_check_model(engine_with_model):
    from gnomon.core.models import check_model, recorded_architecture

    engine = engine_with_model
    assert check_model(engine, {"model": "tiny", "model_architecture": "le_net"}) == {}
    assert check_model(engine, {"model": ""}) == {}
    missing = check_model(engine, {"model": "nope", "model_architecture": "x"})
    assert list(missing) == ["model"] and "no registered model named 'nope'" in missing["model"]
    assert "has no version 9" in check_model(engine, {"model": "tiny/9"})["model"]
    wrong = check_model(engine, {"model": "tiny/1", "model_architecture": "resnet50"})
    assert wrong == {"model_architecture": "model 'tiny/1' was built as 'le_net', not 'resnet50'"}
    assert check_model(engine, {"model": "tiny", "model_architecture": "resnet50"},
                       architecture_field=None) == {}
    target = check_model(engine, {"model": "tiny", "target_class": 3}, target_class_field="target_class")
    assert target == {"target_class": "must be below 3: model 'tiny' has 3 classes"}
    assert check_model(engine, {"model": "tiny", "target_class": 2}, target_class_field="target_class") == {}
    assert recorded_architecture(engine, "tiny") == "le_net"


def test_one_home_for_the_check():
    """No task module rebuilds the architecture comparison from the tags itself."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sources = list((repo / "plugins").rglob("*.py"))
    offenders = [str(p.relative_to(repo)) for p in sources
                 if "TAG_ARCHITECTURE" in p.read_text() and "tests" not in p.parts]
    assert not offenders, f"use gnomon.core.models.check_model / recorded_architecture: {offenders}"
