"""The in-process memo of registered Keras models: loaded once, never stale, can be turned off."""

from __future__ import annotations

import pytest


def _register_tiny_model(engine, name: str, bias: float):
    import keras
    import mlflow
    import mlflow.keras

    engine.ensure_tracking()
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2, bias_initializer=keras.initializers.Constant(bias))])
    with mlflow.start_run(experiment_id=engine.ensure_tracking()):
        info = mlflow.keras.log_model(model, name="model", registered_model_name=name, pip_requirements=[])
    return str(info.registered_model_version)


@pytest.fixture
def engine(gnomon_engine_factory):
    yield gnomon_engine_factory()  # a fresh engine has an empty store


def _count_loads(monkeypatch):
    import mlflow.keras

    calls = []
    real = mlflow.keras.load_model
    monkeypatch.setattr(mlflow.keras, "load_model", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


def test_a_registered_version_is_loaded_once_per_process(engine, monkeypatch):
    from gnomon.core.models import load_registered_model

    _register_tiny_model(engine, "memo_m", 0.5)
    calls = _count_loads(monkeypatch)
    first = load_registered_model(engine, "memo_m/1")
    assert load_registered_model(engine, "memo_m") is first  # "latest" resolves to the same version
    assert calls == ["models:/memo_m/1"]
    _register_tiny_model(engine, "memo_m", 2.0)
    second = load_registered_model(engine, "memo_m")
    assert second is not first and len(calls) == 2
    assert float(second.layers[-1].bias.numpy()[0]) == 2.0


def test_a_deleted_and_reregistered_model_is_not_served_stale(engine, monkeypatch):
    from gnomon.core.models import load_registered_model

    _register_tiny_model(engine, "memo_r", 0.5)
    assert float(load_registered_model(engine, "memo_r/1").layers[-1].bias.numpy()[0]) == 0.5
    engine.mlflow_client().delete_registered_model("memo_r")
    _register_tiny_model(engine, "memo_r", 3.0)  # version 1 again, other weights
    assert float(load_registered_model(engine, "memo_r/1").layers[-1].bias.numpy()[0]) == 3.0


def test_gnomon_model_memo_0_turns_it_off(engine, monkeypatch):
    from gnomon.core.models import load_registered_model

    _register_tiny_model(engine, "memo_off", 0.5)
    monkeypatch.setenv("GNOMON_MODEL_MEMO", "0")
    calls = _count_loads(monkeypatch)
    assert load_registered_model(engine, "memo_off") is not load_registered_model(engine, "memo_off")
    assert len(calls) == 2


def _count_predicts(monkeypatch, model):
    calls = []
    real = model.predict
    monkeypatch.setattr(model, "predict", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    return calls


def test_the_same_model_on_the_same_images_is_predicted_once(monkeypatch):
    """Keyed on content: new weights or changed pixels are predicted again; results equal a fresh predict."""
    import keras
    import numpy as np

    from gnomon.core.models import predict

    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3, activation="softmax")])
    x = np.random.default_rng(0).random((50, 4), dtype=np.float32)
    calls = _count_predicts(monkeypatch, model)
    first = predict(model, x, batch_size=16)
    first[:] = -1  # a caller scribbling on its copy
    second = predict(model, x.copy(), batch_size=16)
    assert calls == [50]
    np.testing.assert_allclose(second, model(x).numpy(), rtol=1e-6)
    x[0, 0] += 1.0  # changed in place: a new computation
    predict(model, x, batch_size=16)
    assert calls == [50, 50]
    model.layers[-1].bias.assign(np.ones(3, np.float32))  # "trained further": a new computation
    third = predict(model, x, batch_size=16)
    assert calls == [50, 50, 50]
    np.testing.assert_allclose(third, model(x).numpy(), rtol=1e-6)
    monkeypatch.setenv("GNOMON_MODEL_MEMO", "0")
    predict(model, x, batch_size=16)
    assert len(calls) == 4
