"""Image datasets: loading class folders, MNIST acquisition, dataset artifacts.

Public API (see docs/architecture.md "Datasets" and docs/datasets.md)::

    from gnomon.core.datasets import (
        ImageDataset, load_image_folder, train_validation_split, quantize, mnist_dir, prepare_mnist,
        resolve_dataset, check_dataset_source, write_dataset_artifact, read_dataset_artifact, safe_extract,
    )

Names are loaded lazily: importing this package imports nothing (the submodules need only
numpy and, when decoding, Pillow; MLflow is imported only when reading an artifact).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ImageDataset": "dataset",
    "quantize": "dataset",
    "to_float": "dataset",
    "to_uint8": "dataset",
    "train_validation_split": "dataset",
    "load_image_folder": "folder",
    "scan_folder": "folder",
    "clear_cache": "folder",
    "cache_dir": "folder",
    "mnist_dir": "mnist",
    "prepare_mnist": "mnist",
    "default_mnist_dest": "mnist",
    "resolve_dataset": "resolve",
    "check_dataset_source": "resolve",
    "write_dataset_artifact": "artifacts",
    "read_dataset_artifact": "artifacts",
    "write_image_folder": "artifacts",
    "safe_extract": "safetar",
    "DatasetError": "errors",
    "UnsafeArchiveError": "errors",
    "ChecksumError": "errors",
    "MnistSourceError": "errors",
}

__all__ = [
    "ChecksumError", "DatasetError", "ImageDataset", "MnistSourceError", "UnsafeArchiveError", "cache_dir",
    "check_dataset_source", "clear_cache", "default_mnist_dest", "load_image_folder", "mnist_dir", "prepare_mnist",
    "quantize", "read_dataset_artifact", "resolve_dataset", "safe_extract", "scan_folder", "to_float", "to_uint8",
    "train_validation_split", "write_dataset_artifact", "write_image_folder",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover
    from .artifacts import read_dataset_artifact, write_dataset_artifact, write_image_folder
    from .dataset import ImageDataset, quantize, to_float, to_uint8, train_validation_split
    from .errors import ChecksumError, DatasetError, MnistSourceError, UnsafeArchiveError
    from .folder import cache_dir, clear_cache, load_image_folder, scan_folder
    from .mnist import default_mnist_dest, mnist_dir, prepare_mnist
    from .resolve import check_dataset_source, resolve_dataset
    from .safetar import safe_extract
