"""Builtin part: small utility tasks that need no deep-learning framework."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import DatasetSource, TaskSchema
from gnomon.core.tasks import Task

if TYPE_CHECKING:
    from gnomon.core.context import CheckContext

from .conventions import ADV_TESTING_NAME, ADV_TESTING_TAR


class DatasetSummarySchema(TaskSchema, DatasetSource("dataset_run_id", default_split="testing",
                                                      default_tar=ADV_TESTING_TAR, default_name=ADV_TESTING_NAME)):
    """``data_dir`` (default: MNIST testing) or a dataset artifact of another run."""


def dataset_summary(ctx, seed: int, **params) -> dict:
    """Count images per class, record image size, pixel statistics and the dataset's provenance."""
    import numpy as np

    from gnomon.core.datasets import resolve_dataset

    dataset = resolve_dataset(ctx)
    counts = np.bincount(dataset.y, minlength=dataset.n_classes)
    x = dataset.x
    mean = float(x.mean(dtype=np.float64)) if x.size else 0.0
    std = float(x.std(dtype=np.float64)) if x.size else 0.0
    poisoned = int(dataset.poisoned_mask().sum())
    ctx.log_metrics({"n_images": len(dataset), "n_classes": dataset.n_classes, "pixel_mean": mean,
                     "pixel_std": std, "n_poisoned": poisoned})
    summary = {
        "classes": dataset.class_names,
        "counts": {c: int(n) for c, n in zip(dataset.class_names, counts, strict=True)},
        "image_shape": list(dataset.image_shape),
        "n_poisoned": poisoned,
        "metadata": {k: v for k, v in dataset.metadata.items() if k != "poisoned_files"},
    }
    ctx.log_json(summary, "dataset_summary.json")
    return {"n_images": len(dataset)}


def _check(ctx: CheckContext, params):
    from gnomon.core.datasets import check_dataset_source

    return check_dataset_source(ctx)


@hookimpl
def register_tasks(register):
    register(Task(name="dataset_summary",
                  summary="Count images per class and record pixel statistics (folder or dataset artifact).",
                  schema=DatasetSummarySchema, fn=dataset_summary, category="data", check=_check))
