"""Poisoning ground truth: which samples of a poisoned set were triggered, after the artifact round trip.

Detectors (activation clustering, spectral signatures) score themselves against
``ImageDataset.poison_ground_truth()``; these tests check that it names exactly the samples
the attack changed, in data read back from artifacts, from folders and from an artifact
written by an earlier gnomon (``tests/data/artifacts/poisoned_v1.tar``).
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from gnomon.core.datasets import ImageDataset, load_image_folder
from gnomon.core.datasets.errors import DatasetError

OLD_ARTIFACT = Path(__file__).parent / "data" / "artifacts" / "poisoned_v1.tar"
PATTERN = [(26, 26), (25, 25), (26, 24), (24, 26)]  # add_pattern_bd, distance 2, on 28x28


def test_artifact_from_an_earlier_gnomon_still_loads_with_its_ground_truth(gnomon_home):
    """poisoned_v1.tar: gen_poison_test_data (label_type=train, 30% of 20 images, target 1) by gnomon 0.x."""
    from gnomon.core.datasets.artifacts import load_dataset_tar

    data = load_dataset_tar(OLD_ARTIFACT, "poisoned", progress=False)
    assert len(data) == 20 and data.poison_known
    truth = data.poison_ground_truth()
    assert truth.sum() == 6
    assert {f for f, m in zip(data.files, truth, strict=True) if m} == set(data.metadata["poisoned_files"])
    assert np.all(data.y[truth] == 1)  # relabelled to the target class
    for k in np.flatnonzero(truth):  # each marked sample carries the checkerboard
        assert all(data.x[k, r, c, 0] == 1.0 for r, c in PATTERN)
    unmarked_with_pattern = [k for k in np.flatnonzero(~truth) if all(data.x[k, r, c, 0] == 1.0 for r, c in PATTERN)]
    assert not unmarked_with_pattern


def test_a_tar_without_gnomon_metadata_has_unknown_ground_truth(tmp_path, gnomon_home):
    from gnomon.core.datasets.artifacts import load_dataset_tar

    plain = tmp_path / "plain.tar"
    with tarfile.open(OLD_ARTIFACT) as src, tarfile.open(plain, "w") as dst:
        for member in src.getmembers():
            if not member.name.endswith("gnomon-dataset.json"):
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    data = load_dataset_tar(plain, "poisoned", progress=False)
    assert len(data) == 20 and not data.poison_known
    assert data.poison_ground_truth() is None
    assert not data.poisoned_mask().any()


def test_clean_folder_unknown_and_fraction_zero_known(gnomon_engine, mnist_sample_dirs):
    from gnomon.core.datasets import read_dataset_artifact

    clean = load_image_folder(mnist_sample_dirs["testing"], progress=False)
    assert not clean.poison_known and clean.poison_ground_truth() is None
    result = gnomon_engine.run("gen_poison_test_data", {"data_dir": str(mnist_sample_dirs["testing"]),
                                                        "poison_fraction": 0.0})
    data = read_dataset_artifact(gnomon_engine, result.run_id, "adversarial_poison.tar.gz", "adv_poison_data")
    assert data.poison_known and data.poison_ground_truth().sum() == 0


def test_training_set_poisoned_then_read_back_split_and_rewritten(gnomon_engine, mnist_sample_dirs,
                                                                  mnist_sample_arrays, tmp_path):
    """label_type=train: the ground truth is exactly the changed samples, through artifact, split and folder."""
    from gnomon.core.datasets import read_dataset_artifact, write_image_folder

    images, _ = mnist_sample_arrays["training"]
    result = gnomon_engine.run("gen_poison_test_data", {
        "data_dir": str(mnist_sample_dirs["training"]), "label_type": "train", "poison_fraction": 0.1,
        "target_class": 1, "seed": 11})
    data = read_dataset_artifact(gnomon_engine, result.run_id, "adversarial_poison.tar.gz", "adv_poison_data")
    truth = data.poison_ground_truth()
    originals = np.stack([images[int(PurePosixPath(f).stem)] for f in data.files]).astype(np.float32) / 255.0
    changed = np.any(data.x[..., 0] != originals, axis=(1, 2))
    assert truth.sum() == 100 == result.metrics["n_poisoned"]
    # a poisoned sample whose four pattern pixels were already white is unchanged, never the reverse
    assert not (changed & ~truth).any() and (changed & truth).sum() >= 95
    train, val = data.split(0.2, seed=3)
    assert train.poison_ground_truth().sum() + val.poison_ground_truth().sum() == 100
    write_image_folder(val, tmp_path / "val", progress=False)
    again = load_image_folder(tmp_path / "val", progress=False, cache=False)
    np.testing.assert_array_equal(again.poison_ground_truth(), val.poison_ground_truth())


def test_marks_that_name_missing_files_are_refused():
    x = np.zeros((3, 2, 2, 1), np.float32)
    files = ["a/0.png", "a/1.png", "a/2.png"]
    ok = ImageDataset(x, [0, 0, 0], ["a"], {"poisoned_files": ["a/1.png"]}, files)
    np.testing.assert_array_equal(ok.poison_ground_truth(), [False, True, False])
    bad = ImageDataset(x, [0, 0, 0], ["a"], {"poisoned_files": ["a/1.png", "a/9.png"]}, files)
    with pytest.raises(DatasetError, match=r"1 poisoned file\(s\) it does not hold \(a/9.png\)"):
        bad.poison_ground_truth()
    in_memory = ImageDataset(x, [0, 0, 0], ["a"], {"poisoned_indices": [2]})
    np.testing.assert_array_equal(in_memory.poison_ground_truth(), [False, False, True])
    assert not ImageDataset(x, [0, 0, 0], ["a"], {"poisoned_files": ["a/1.png"]}).poison_known

