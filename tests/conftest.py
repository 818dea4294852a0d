"""Shared fixtures: the shipped real-MNIST sample as class folders, and isolation from the user's setup."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IDX = REPO / "tests" / "data" / "mnist_sample"
FULL_MNIST = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No test sees the developer's GNOMON_* settings or tracking server."""
    for name in list(os.environ):
        if name.startswith("GNOMON_") or name in {"MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"}:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GNOMON_HOME", str(tmp_path_factory.mktemp("default-home")))
    monkeypatch.setenv("GNOMON_MNIST_SOURCE", str(SAMPLE_IDX))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")


def _read_idx(path: Path):
    import numpy as np

    data = gzip.open(path).read()
    if "images" in path.name:
        n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)
    return np.frombuffer(data, np.uint8, offset=8)


@pytest.fixture(scope="session")
def mnist_sample_dirs(tmp_path_factory) -> dict[str, Path]:
    """The shipped MNIST sample (1,000 train / 300 test) as ``{split}/{label}/{n}.png`` folders.

    Built straight from the IDX files with PIL, independently of gnomon's own loader, so tests
    of that loader compare against an independent reference.
    """
    from PIL import Image

    root = tmp_path_factory.mktemp("mnist-sample")
    out = {}
    for split, prefix in (("training", "train"), ("testing", "t10k")):
        images = _read_idx(SAMPLE_IDX / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(SAMPLE_IDX / f"{prefix}-labels-idx1-ubyte.gz")
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i}.png")
        out[split] = root / split
    return out


@pytest.fixture(scope="session")
def mnist_sample_arrays():
    """The shipped sample as arrays: ``{"training": (x uint8 NHW, y), "testing": (...)}``."""
    return {
        split: (_read_idx(SAMPLE_IDX / f"{p}-images-idx3-ubyte.gz"), _read_idx(SAMPLE_IDX / f"{p}-labels-idx1-ubyte.gz"))
        for split, p in (("training", "train"), ("testing", "t10k"))
    }
