"""Builtin part: small utility tasks that need no deep-learning framework."""

from __future__ import annotations

from marshmallow import fields

from gnomon.core.schemas import TaskSchema
from gnomon.core.tasks import Task


class DatasetSummarySchema(TaskSchema):
    data_dir = fields.String(required=True, metadata={
        "description": "Folder of class subfolders of images (e.g. a 'gnomon data mnist' split)."})


def dataset_summary(ctx, data_dir: str, seed: int) -> dict:
    """Count images per class, record image size and pixel statistics."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir '{root}' is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"data_dir '{root}' has no class subfolders")
    counts, shapes = {}, set()
    total, sum_, sumsq = 0, 0.0, 0.0
    files = [(c, f) for c in classes for f in sorted((root / c).iterdir()) if f.is_file()]
    with ctx.progress("reading images", total=len(files)) as advance:
        for cls, path in files:
            with Image.open(path) as im:
                arr = np.asarray(im, dtype=np.float64) / 255.0
            shapes.add(arr.shape)
            counts[cls] = counts.get(cls, 0) + 1
            total += arr.size
            sum_ += arr.sum()
            sumsq += np.square(arr).sum()
            advance()
    mean = sum_ / total
    std = float(np.sqrt(max(sumsq / total - mean**2, 0.0)))
    ctx.log_metrics({"n_images": len(files), "n_classes": len(classes), "pixel_mean": mean, "pixel_std": std})
    summary = {"classes": classes, "counts": counts, "image_shapes": sorted(map(list, shapes))}
    ctx.log_json(summary, "dataset_summary.json")
    return {"n_images": len(files)}


def register_tasks(register):
    register(Task(name="dataset_summary", summary="Count images per class and record pixel statistics.",
                  schema=DatasetSummarySchema, fn=dataset_summary, category="data"))
