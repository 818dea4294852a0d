"""The builtin dataset_summary task reads folders (default: MNIST from GNOMON_MNIST_SOURCE) and artifacts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gnomon.core.errors import ParamValidationError


def _summary(engine, run_id, tmp_path):
    path = engine.mlflow_client().download_artifacts(run_id, "dataset_summary.json", str(tmp_path))
    return json.loads(open(path).read())


def test_summary_of_default_mnist_split(gnomon_engine, mnist_sample_arrays, tmp_path):
    result = gnomon_engine.run("dataset_summary", {})
    x, y = mnist_sample_arrays["testing"]
    assert result.metrics["n_images"] == 300 and result.metrics["n_classes"] == 10
    assert result.metrics["pixel_mean"] == pytest.approx(x.mean() / 255, abs=1e-6)
    summary = _summary(gnomon_engine, result.run_id, tmp_path)
    assert summary["counts"] == {str(c): int(n) for c, n in enumerate(np.bincount(y, minlength=10))}
    assert summary["image_shape"] == [28, 28, 1]


def test_summary_of_folder_and_bad_folder(gnomon_engine, mnist_sample_dirs):
    result = gnomon_engine.run("dataset_summary", {"data_dir": str(mnist_sample_dirs["training"])})
    assert result.metrics["n_images"] == 1000
    with pytest.raises(ParamValidationError, match="data_dir: '/nonexistent' is not a folder"):
        gnomon_engine.run("dataset_summary", {"data_dir": "/nonexistent"})
    with pytest.raises(ParamValidationError, match="dataset_run_id: no MLflow run 'abc'"):
        gnomon_engine.run("dataset_summary", {"load_dataset_from_mlruns": True, "dataset_run_id": "abc"})
