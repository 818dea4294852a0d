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
