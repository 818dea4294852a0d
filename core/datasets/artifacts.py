"""Dataset artifacts (the seed's convention): a tar ``dataset_tar_name`` holding folder ``dataset_name``.

Inside the folder: ``<class>/<file>.png`` (8-bit PNG, grayscale or RGB) and ``gnomon-dataset.json``
(provenance metadata plus ``class_names``, ``files`` in dataset order, ``image_shape``, ...).
Writing quantises to 8 bits, so what a consumer reads back equals ``quantize(x)`` exactly.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ._util import resolve_progress, run_chunks, worker_count
from .dataset import ImageDataset, to_float, to_uint8
from .errors import DatasetError
from .folder import MANIFEST, load_image_folder
from .safetar import safe_extract

FORMAT_VERSION = 1


def _check_name(value: str, what: str, *, tar: bool = False) -> str:
    value = str(value or "")
    if not value or "/" in value or "\\" in value or value in (".", "..") or value.startswith("."):
        raise DatasetError(f"{what} must be a plain file/folder name (no '/', not hidden); got {value!r}")
    if tar and not value.endswith((".tar", ".tar.gz", ".tgz")):
        raise DatasetError(f"{what} must end with .tar, .tar.gz or .tgz; got {value!r}")
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def artifact_file_names(dataset: ImageDataset) -> list[str]:
    """``"<class>/<stem>.png"`` for each sample: the original stem when known, else its index; unique."""
    names, seen = [], set()
    for i, label in enumerate(dataset.y):
        stem = PurePosixPath(dataset.files[i]).stem if dataset.files is not None else str(i)
        name = f"{dataset.class_names[int(label)]}/{stem}.png"
        if name in seen:
            name = f"{dataset.class_names[int(label)]}/{stem}_{i}.png"
        seen.add(name)
        names.append(name)
    return names


def _write_png_chunk(root: str, names: list[str], images: np.ndarray) -> int:
    from PIL import Image

    for name, img in zip(names, images, strict=True):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(os.path.join(root, name))
    return len(names)


def write_image_folder(dataset: ImageDataset, folder: Path, *, progress: Any = None,
                       metadata: dict[str, Any] | None = None) -> ImageDataset:
    """Write ``dataset`` as 8-bit PNG class folders plus ``gnomon-dataset.json`` into ``folder``.

    Returns the dataset as it will read back: ``x = quantize(x)``, ``files`` set, metadata as written.
    """
    u8 = to_uint8(dataset.x)
    if u8.shape[-1] not in (1, 3):
        raise DatasetError(f"dataset images must have 1 or 3 channels to be written as PNG; got {u8.shape[-1]}")
    names = artifact_file_names(dataset)
    meta = copy.deepcopy(metadata if metadata is not None else dataset.metadata)
    mask = dataset.poisoned_mask()
    meta.pop("poisoned_indices", None)
    if mask.any() or "poisoned_files" in meta:
        meta["poisoned_files"] = [n for n, m in zip(names, mask, strict=True) if m]
    if meta.get("target_class") is not None:
        meta["target_class"] = int(meta["target_class"])
    meta = _jsonable(meta)
    folder.mkdir(parents=True, exist_ok=True)
    for cls in dataset.class_names:
        (folder / cls).mkdir(exist_ok=True)
    n = len(names)
    workers = worker_count(n, per_worker_min=5000)
    step = 2000
    starts = list(range(0, n, step))
    with resolve_progress(progress)(f"writing {folder.name}", total=n) as advance:
        run_chunks(_write_png_chunk, [(str(folder), names[s:s + step], u8[s:s + step]) for s in starts],
                   workers, advance, [min(step, n - s) for s in starts])
    manifest = dict(meta)
    manifest.update({"gnomon_dataset_format": FORMAT_VERSION, "pixel_format": "png-8bit",
                     "class_names": list(dataset.class_names), "n_images": n,
                     "image_shape": list(u8.shape[1:]), "files": names})
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return ImageDataset(to_float(u8), dataset.y.copy(), list(dataset.class_names), meta, names)


def _reset_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def make_tar(folder: Path, tar_path: Path) -> Path:
    """Tar ``folder`` (as its own name) into ``tar_path`` (gzip for .tar.gz/.tgz), written atomically."""
    mode = "w:gz" if tar_path.name.endswith((".tar.gz", ".tgz")) else "w"
    tmp = tar_path.with_name(f".{tar_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tarfile.open(tmp, mode) as tar:
            tar.add(folder, arcname=folder.name, filter=_reset_owner)
        os.replace(tmp, tar_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tar_path


def produced_by(ctx: Any) -> dict[str, Any]:
    """``{"task", "run_id", "params", "experiment"}`` of the run ``ctx`` describes."""
    return {"task": getattr(ctx, "task", None), "run_id": getattr(ctx, "run_id", None),
            "experiment": getattr(ctx, "experiment_name", None),
            "params": _jsonable(dict(getattr(ctx, "params", {}) or {}))}


def write_dataset_artifact(ctx: Any, dataset: ImageDataset, tar_name: str, dataset_name: str, *,
                           progress: Any = None) -> ImageDataset:
    """Log ``dataset`` as the tar artifact ``tar_name`` holding folder ``dataset_name`` in ``ctx``'s run.

    Values are quantised to 8 bits (PNG). ``metadata["produced_by"]`` is set to this run (task,
    run id, params; an earlier ``produced_by`` moves to ``metadata["lineage"]``). Returns the
    dataset exactly as a consumer will read it back: evaluate on it (``x == quantize(dataset.x)``)
    so reported numbers survive the round trip.
    """
    tar_name = _check_name(tar_name, "dataset_tar_name", tar=True)
    dataset_name = _check_name(dataset_name, "dataset_name")
    meta = copy.deepcopy(dataset.metadata)
    if meta.get("produced_by"):
        meta.setdefault("lineage", []).append(meta["produced_by"])
    meta["produced_by"] = produced_by(ctx)
    workdir = Path(getattr(ctx, "workdir", None) or tempfile.mkdtemp(prefix="gnomon-"))
    staging = workdir / f"dataset-{uuid.uuid4().hex[:8]}"
    if progress is None and hasattr(ctx, "progress"):
        progress = ctx if getattr(ctx, "show_progress", True) else False
    try:
        written = write_image_folder(dataset, staging / dataset_name, progress=progress, metadata=meta)
        tar_path = make_tar(staging / dataset_name, staging / tar_name)
        ctx.log_artifact(tar_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


# -- reading ----------------------------------------------------------------
def _engine_of(engine_or_ctx: Any) -> Any:
    return getattr(engine_or_ctx, "engine", None) or engine_or_ctx


def _client(engine: Any):
    if hasattr(engine, "mlflow_client"):
        return engine.mlflow_client()
    import mlflow

    return mlflow.MlflowClient()


def _tracking_uri(engine: Any) -> str:
    return getattr(engine, "tracking_uri", None) or "the MLflow tracking store"


def check_artifact(engine: Any, run_id: str, tar_name: str) -> str | None:
    """A message if run ``run_id`` does not exist or has no artifact ``tar_name``; None if fine."""
    from mlflow.exceptions import MlflowException

    engine = _engine_of(engine)
    client = _client(engine)
    try:
        client.get_run(run_id)
    except MlflowException:
        return f"no MLflow run '{run_id}' in {_tracking_uri(engine)}"
    try:
        names = [a.path for a in client.list_artifacts(run_id)]
    except Exception as exc:  # artifact store unreachable
        return f"cannot list the artifacts of run '{run_id}': {type(exc).__name__}: {exc}"
    if tar_name not in names:
        tars = sorted(n for n in names if n.endswith((".tar", ".tar.gz", ".tgz")))
        return (f"run '{run_id}' has no artifact '{tar_name}'"
                + (f" (its tar artifacts: {', '.join(tars)})" if tars else " (it has no tar artifacts)"))
    return None


def read_dataset_artifact(engine: Any, run_id: str, tar_name: str, dataset_name: str, *,
                          image_size: Any = None, color_mode: str | None = None,
                          progress: Any = None) -> ImageDataset:
    """Download tar artifact ``tar_name`` of run ``run_id``, extract it safely, load folder ``dataset_name``.

    Works with the embedded store and a remote tracking server (MLflow artifact download).
    Clear :class:`DatasetError` for a missing run, a missing tar, or a tar without ``dataset_name``;
    :class:`UnsafeArchiveError` for hostile tars. ``metadata["artifact"]`` records where it came from.
    """
    if not run_id:
        raise DatasetError("a run id is needed to read a dataset artifact")
    tar_name = _check_name(tar_name, "dataset_tar_name", tar=True)
    dataset_name = _check_name(dataset_name, "dataset_name")
    engine = _engine_of(engine)
    problem = check_artifact(engine, run_id, tar_name)
    if problem:
        raise DatasetError(problem)
    tmp = Path(tempfile.mkdtemp(prefix="gnomon-dataset-"))
    try:
        local = Path(_client(engine).download_artifacts(run_id, tar_name, str(tmp)))
        extracted = safe_extract(local, tmp / "extracted")
        folder = extracted / dataset_name
        if not folder.is_dir():
            top = sorted({p.name for p in extracted.iterdir()})
            raise DatasetError(f"artifact '{tar_name}' of run '{run_id}' has no folder '{dataset_name}' "
                               f"(it holds: {', '.join(top) if top else 'nothing'}); check dataset_name")
        dataset = load_image_folder(folder, image_size=image_size, color_mode=color_mode, cache=False,
                                    progress=progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if dataset.metadata.get("source") == str(folder):
        dataset.metadata["source"] = f"runs:/{run_id}/{tar_name}#{dataset_name}"
    dataset.metadata["artifact"] = {"run_id": run_id, "tar_name": tar_name, "dataset_name": dataset_name}
    return dataset
