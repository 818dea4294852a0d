"""Test setup: no developer GNOMON_* settings leak in; MNIST comes from the sample shipped in gnomon's repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: gnomon's repository keeps a real 1,000/300 MNIST sample; override with GNOMON_TEST_MNIST_SOURCE.
SAMPLE = Path(__file__).resolve().parents[4] / "tests" / "data" / "mnist_sample"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path_factory):
    for name in list(os.environ):
        if name.startswith("GNOMON_") and name != "GNOMON_TEST_MNIST_SOURCE" or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GNOMON_HOME", str(tmp_path_factory.mktemp("default-home")))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    source = os.environ.get("GNOMON_TEST_MNIST_SOURCE") or str(SAMPLE)
    if Path(source).exists():
        monkeypatch.setenv("GNOMON_MNIST_SOURCE", source)


@pytest.fixture
def mnist_source():
    """The MNIST IDX folder the tests use (skips if neither the sample nor an override exists)."""
    source = os.environ.get("GNOMON_MNIST_SOURCE")
    if not source:
        pytest.skip(f"no MNIST sample at {SAMPLE}; set GNOMON_TEST_MNIST_SOURCE")
    return source


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory):
    """A tracking store holding an ``mlp``-or-``shallow_net`` model trained on the MNIST sample.

    Trained once per session (2 epochs on 1,000 images); tests attack it through :func:`fgm_engine`.
    Uses ``mlp`` when gnomon-feature-squeezing is installed, else the builtin ``shallow_net``.
    """
    from gnomon.core.engine import Engine
    from gnomon.core.plugins import load_plugins

    source = os.environ.get("GNOMON_TEST_MNIST_SOURCE") or str(SAMPLE)
    if not Path(source).exists():
        pytest.skip(f"no MNIST sample at {SAMPLE}; set GNOMON_TEST_MNIST_SOURCE")
    home = tmp_path_factory.mktemp("trained-home")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("GNOMON_HOME", str(home))
        m.setenv("GNOMON_MNIST_SOURCE", source)
        m.delenv("MLFLOW_TRACKING_URI", raising=False)
        engine = Engine(load_plugins(environ={}), experiment="test", show_progress=False)
        arch = "mlp" if "mlp" in engine.registry.models else "shallow_net"
        result = engine.run("train", {"model_architecture": arch, "epochs": 2, "register_model": True,
                                      "validation_split": 0.0, "seed": 1})
    return {"home": home, "model": f"{result.outputs['model_name']}/{result.outputs['model_version']}",
            "architecture": arch, "accuracy": result.metrics["accuracy"]}


@pytest.fixture
def fgm_engine(trained_home, monkeypatch):
    """An engine on the store holding the trained model (every installed plugin loaded)."""
    from gnomon.core.engine import Engine
    from gnomon.core.plugins import load_plugins

    monkeypatch.setenv("GNOMON_HOME", str(trained_home["home"]))
    return Engine(load_plugins(environ={}), experiment="test", show_progress=False)
