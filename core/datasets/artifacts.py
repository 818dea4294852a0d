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
from typing import TYPE_CHECKING, Any

import numpy as np

from ..jsonable import jsonable
from ._util import resolve_progress, run_chunks, worker_count
from .dataset import ImageDataset, to_float, to_uint8
from .errors import DatasetError
from .folder import MANIFEST

if TYPE_CHECKING:
    from ..context import RunContext, Services

FORMAT_VERSION = 1


def _check_name(value: str, what: str, *, tar: bool = False) -> str:
    value = str(value or "")
    if not value or "/" in value or "\\" in value or value in (".", "..") or value.startswith("."):
        raise DatasetError(f"{what} must be a plain file/folder name (no '/', not hidden); got {value!r}")
    if tar and not value.endswith((".tar", ".tar.gz", ".tgz")):
        raise DatasetError(f"{what} must end with .tar, .tar.gz or .tgz; got {value!r}")
    return value


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


def _encode_png_chunk(images: np.ndarray) -> list[bytes]:
    """uint8 ``(k, h, w, c)`` -> PNG bytes (8-bit grayscale for c=1, RGB for c=3); see :mod:`.png`."""
    from .png import encode_png

    return [encode_png(img) for img in images]


def _encode_all(u8: np.ndarray, progress: Any, description: str):
    """Yield ``(start, [png bytes])`` chunks in order (worker processes only for very large sets)."""
    n = len(u8)
    step = 2000
    starts = list(range(0, n, step))
    workers = worker_count(n, per_worker_min=50000)
    with resolve_progress(progress)(description, total=n) as advance:
        chunks = run_chunks(_encode_png_chunk, [(u8[s:s + step],) for s in starts], workers, advance,
                            [min(step, n - s) for s in starts])
    return zip(starts, chunks, strict=True)


def _prepare(dataset: ImageDataset, metadata: dict[str, Any] | None) -> tuple[np.ndarray, list[str], dict, dict]:
    """(uint8 pixels, file names, metadata as written, manifest) for writing ``dataset``."""
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
    meta = jsonable(meta)
    manifest = dict(meta)
    manifest.update({"gnomon_dataset_format": FORMAT_VERSION, "pixel_format": "png-8bit",
                     "class_names": list(dataset.class_names), "n_images": len(names),
                     "image_shape": list(u8.shape[1:]), "files": names})
    return u8, names, meta, manifest


def write_image_folder(dataset: ImageDataset, folder: Path, *, progress: Any = None,
                       metadata: dict[str, Any] | None = None) -> ImageDataset:
    """Write ``dataset`` as 8-bit PNG class folders plus ``gnomon-dataset.json`` into ``folder``.

    Returns the dataset as it will read back: ``x = quantize(x)``, ``files`` set, metadata as written.
    """
    u8, names, meta, manifest = _prepare(dataset, metadata)
    folder.mkdir(parents=True, exist_ok=True)
    for cls in dataset.class_names:
        (folder / cls).mkdir(exist_ok=True)
    for start, blobs in _encode_all(u8, progress, f"writing {folder.name}"):
        for name, blob in zip(names[start:start + len(blobs)], blobs, strict=True):
            (folder / name).write_bytes(blob)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return ImageDataset(to_float(u8), dataset.y.copy(), list(dataset.class_names), meta, names)


def write_dataset_tar(dataset: ImageDataset, tar_path: Path, dataset_name: str, *, progress: Any = None,
                      metadata: dict[str, Any] | None = None) -> ImageDataset:
    """Write the tar ``tar_path`` holding ``dataset_name/<class>/<file>.png`` + ``gnomon-dataset.json``.

    PNGs are encoded in memory (worker processes for large sets) and streamed into the tar; the tar
    is written under a temporary name and renamed (gzip for ``.tar.gz``/``.tgz``). Returns the dataset
    as it will read back (``x = quantize(x)``).
    """
    import gzip
    import time

    from .tarwriter import TarWriter

    u8, names, meta, manifest = _prepare(dataset, metadata)
    gz = tar_path.name.endswith((".tar.gz", ".tgz"))
    tmp = tar_path.with_name(f".{tar_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as raw:
            stream = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if gz else raw
            tar = TarWriter(stream, mtime=time.time())
            tar.add_dir(dataset_name)
            tar.add_file(f"{dataset_name}/{MANIFEST}", json.dumps(manifest, indent=1, sort_keys=True).encode())
            for cls in dataset.class_names:
                tar.add_dir(f"{dataset_name}/{cls}")
            for start, blobs in _encode_all(u8, progress, f"writing {dataset_name}"):
                for name, blob in zip(names[start:start + len(blobs)], blobs, strict=True):
                    tar.add_file(f"{dataset_name}/{name}", blob)
            tar.close()
            if gz:
                stream.close()
        os.replace(tmp, tar_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ImageDataset(to_float(u8), dataset.y.copy(), list(dataset.class_names), meta, names)


def produced_by(ctx: RunContext) -> dict[str, Any]:
    """``{"task", "run_id", "params", "experiment"}`` of the run ``ctx`` describes."""
    return {"task": ctx.task, "run_id": ctx.run_id, "experiment": ctx.experiment_name,
            "params": jsonable(dict(ctx.params or {}))}


def write_dataset_artifact(ctx: RunContext, dataset: ImageDataset, tar_name: str, dataset_name: str, *,
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
    staging = ctx.workdir / f"dataset-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    if progress is None:
        progress = ctx if ctx.show_progress else False
    try:
        written = write_dataset_tar(dataset, staging / tar_name, dataset_name, progress=progress, metadata=meta)
        ctx.log_artifact(staging / tar_name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if ctx.run_id:
        # a later step in this process reads exactly this back: keep it, served once the run finished
        ctx.store.datasets.put(_memo_key(ctx, ctx.run_id, tar_name, dataset_name),
                               _as_read_back(written, ctx.run_id, tar_name, dataset_name), pending=True)
    return written


def _as_read_back(dataset: ImageDataset, run_id: str, tar_name: str, dataset_name: str) -> ImageDataset:
    """``dataset`` as :func:`read_dataset_artifact` returns it (a copy, with ``source`` and ``artifact``)."""
    out = _copy_dataset(dataset)
    out.metadata.setdefault("source", f"runs:/{run_id}/{tar_name}#{dataset_name}")
    out.metadata["artifact"] = {"run_id": run_id, "tar_name": tar_name, "dataset_name": dataset_name}
    return out


def _memo_key(services: Services, run_id: str, tar_name: str, dataset_name: str, image_size: Any = None,
              color_mode: str | None = None) -> tuple:
    return (services.tracking_uri, run_id, tar_name, dataset_name, repr(image_size), color_mode)


def load_dataset_tar(tar_path: str | Path, dataset_name: str, *, image_size: Any = None,
                     color_mode: str | None = None, progress: Any = None, label: str | None = None,
                     limits: Any = None) -> ImageDataset:
    """Load folder ``dataset_name`` of a dataset tar without extracting it to disk.

    Every member is first checked, as the archive streams by, with the rules and size limits of
    :func:`safe_extract` (a hostile archive or one over ``limits``, default
    :meth:`TarLimits.from_settings`, is refused as a whole with :class:`UnsafeArchiveError` before
    any image is read); images are then read from the archive into memory, one member at a time,
    and decoded (in parallel for large sets). Order, class names and metadata follow
    ``gnomon-dataset.json`` as for :func:`load_image_folder`.
    """
    import posixpath

    from ._util import IMAGE_SUFFIXES
    from .folder import STRUCTURAL_KEYS, _normalise_color, _normalise_size, class_names_for, order_files
    from .safetar import check_members, open_tar

    size, mode = _normalise_size(image_size), _normalise_color(color_mode)
    tar_path = Path(tar_path)
    label = label or f"'{tar_path.name}'"
    with open_tar(tar_path, label) as tar:
        members = check_members(tar, label, limits)
        prefix = dataset_name + "/"
        inside = {}
        top = set()
        for m in members:
            norm = posixpath.normpath(m.name)
            top.add(norm.split("/", 1)[0])
            if norm == dataset_name or norm.startswith(prefix):
                inside[norm[len(prefix):] if norm != dataset_name else ""] = m
        if not inside:
            raise DatasetError(f"artifact {label} has no folder '{dataset_name}' "
                               f"(it holds: {', '.join(sorted(top)) if top else 'nothing'}); check dataset_name")
        manifest = {}
        if MANIFEST in inside:
            try:
                manifest = json.loads(tar.extractfile(inside[MANIFEST]).read())
            except (ValueError, AttributeError) as exc:
                raise DatasetError(f"cannot read {dataset_name}/{MANIFEST} in {label}: {exc}") from None
            if not isinstance(manifest, dict):
                raise DatasetError(f"{dataset_name}/{MANIFEST} in {label} must hold a JSON object")
        folders = {rel.split("/", 1)[0] for rel, m in inside.items() if "/" in rel or m.isdir()} - {""}
        folders = {f for f in folders if not f.startswith(".")}
        class_names = class_names_for(manifest, sorted(folders), f"{dataset_name}/{MANIFEST} in {label}")
        if not class_names:
            raise DatasetError(f"folder '{dataset_name}' in {label} has no class subfolders")
        index = {c: i for i, c in enumerate(class_names)}
        images = {rel: m for rel, m in inside.items()
                  if rel.count("/") == 1 and (m.isfile() or m.islnk() or m.issym())
                  and not rel.split("/")[1].startswith(".") and rel.lower().endswith(IMAGE_SUFFIXES)
                  and rel.split("/")[0] in index}
        if not images:
            raise DatasetError(f"folder '{dataset_name}' in {label} holds no images")
        per_class = [(c, [r for r in images if r.split("/", 1)[0] == c]) for c in class_names]
        files = order_files(manifest, images, per_class)
        try:
            blobs = [tar.extractfile(images[rel]).read() for rel in files]
        except (tarfile.TarError, EOFError, KeyError) as exc:
            raise DatasetError(f"cannot read the images of {label}: {type(exc).__name__}: {exc}") from None
    from .folder import decode_in_memory

    u8 = decode_in_memory(f"{label}#{dataset_name}", files, blobs, size, mode, progress=progress)
    labels = np.fromiter((index[f.split("/", 1)[0]] for f in files), dtype=np.int64, count=len(files))
    metadata = {k: v for k, v in manifest.items() if k not in STRUCTURAL_KEYS}
    return ImageDataset(to_float(u8), labels, class_names, metadata, files)


# -- reading ----------------------------------------------------------------
def check_artifact(services: Services, run_id: str, tar_name: str) -> str | None:
    """A message if run ``run_id`` does not exist or has no artifact ``tar_name``; None if fine."""
    from mlflow.exceptions import MlflowException

    client = services.mlflow_client()
    try:
        client.get_run(run_id)
    except MlflowException:
        return f"no MLflow run '{run_id}' in {services.tracking_uri}"
    try:
        names = [a.path for a in client.list_artifacts(run_id)]
    except Exception as exc:  # artifact store unreachable
        return f"cannot list the artifacts of run '{run_id}': {type(exc).__name__}: {exc}"
    if tar_name not in names:
        tars = sorted(n for n in names if n.endswith((".tar", ".tar.gz", ".tgz")))
        return (f"run '{run_id}' has no artifact '{tar_name}'"
                + (f" (its tar artifacts: {', '.join(tars)})" if tars else " (it has no tar artifacts)"))
    return None


def read_dataset_artifact(services: Services, run_id: str, tar_name: str, dataset_name: str, *,
                          image_size: Any = None, color_mode: str | None = None,
                          progress: Any = None) -> ImageDataset:
    """Download tar artifact ``tar_name`` of run ``run_id`` and load its folder ``dataset_name``.

    Works with the embedded store and a remote tracking server (MLflow artifact download). The tar
    is checked member by member with the rules of :func:`safe_extract` and read in memory (see
    :func:`load_dataset_tar`). Clear :class:`DatasetError` for a missing run, a missing tar, or a tar
    without ``dataset_name``; :class:`UnsafeArchiveError` for hostile tars.
    ``metadata["artifact"]`` records where it came from.
    """
    if not run_id:
        raise DatasetError("a run id is needed to read a dataset artifact")
    tar_name = _check_name(tar_name, "dataset_tar_name", tar=True)
    dataset_name = _check_name(dataset_name, "dataset_name")
    key = _memo_key(services, run_id, tar_name, dataset_name, image_size, color_mode)
    cached = services.store.datasets.get(key, confirm=lambda: _run_finished(services, run_id))
    if cached is not None:
        return _copy_dataset(cached)
    problem = check_artifact(services, run_id, tar_name)
    if problem:
        raise DatasetError(problem)
    tmp = Path(tempfile.mkdtemp(prefix="gnomon-dataset-"))
    try:
        local = Path(services.mlflow_client().download_artifacts(run_id, tar_name, str(tmp)))
        dataset = load_dataset_tar(local, dataset_name, image_size=image_size, color_mode=color_mode,
                                   progress=progress, label=f"'{tar_name}' of run '{run_id}'")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dataset.metadata.setdefault("source", f"runs:/{run_id}/{tar_name}#{dataset_name}")
    dataset.metadata["artifact"] = {"run_id": run_id, "tar_name": tar_name, "dataset_name": dataset_name}
    if _run_finished(services, run_id):
        services.store.datasets.put(key, dataset)
        return _copy_dataset(dataset)
    return dataset


def dataset_in_memory(services: Services, run_id: str, tar_name: str, dataset_name: str) -> ImageDataset | None:
    """The artifact's dataset if this process already holds it (read or written here, run FINISHED), else None.

    For readers that only want a peek (a report's example images) and would rather not download
    and open the tar when the data is at hand. The returned dataset is shared: do not modify it.
    """
    key = _memo_key(services, run_id, tar_name, dataset_name)
    return services.store.datasets.get(key, confirm=lambda: _run_finished(services, run_id))


def _memo_budget() -> int:
    from .. import settings

    return settings.dataset_memo_bytes()


class DatasetMemo:
    """Datasets read from (or written as) FINISHED runs' artifacts, kept in memory by an engine's store.

    A finished run's artifacts do not change, so a workflow whose steps read the same triggered
    test set seven times decodes it at most once, and not at all when the producing step ran in
    this process: :func:`write_dataset_artifact` leaves what it wrote here as *pending*, served
    only once its run is FINISHED (a failed producer's data is never served). Bounded by
    ``GNOMON_DATASET_MEMO_MB`` (default 1024; 0 turns it off); least recently used entries go first.
    """

    def __init__(self) -> None:
        from ..memo import LRU

        self.lru = LRU(_memo_budget, size=lambda dataset: dataset.x.nbytes)
        self.pending: set = set()

    @property
    def entries(self):
        return self.lru.entries

    def get(self, key, confirm=None):
        """The dataset under ``key``; a pending one only if ``confirm()`` says its run finished."""
        if key in self.pending and key in self.lru:
            if confirm is None or not confirm():
                return None
            self.pending.discard(key)
        return self.lru.get(key)

    def put(self, key, dataset: ImageDataset, *, pending: bool = False) -> None:
        (self.pending.add if pending else self.pending.discard)(key)
        for evicted in self.lru.put(key, dataset):
            self.pending.discard(evicted)

    def pop(self, key):
        """Remove and return the entry under ``key`` (None if absent)."""
        self.pending.discard(key)
        return self.lru.entries.pop(key, None)

    def clear(self) -> None:
        self.lru.clear()
        self.pending.clear()



def _copy_dataset(dataset: ImageDataset) -> ImageDataset:
    """A copy callers may modify without touching the memo."""
    return dataset.replace(x=dataset.x.copy(), y=dataset.y.copy(), metadata=copy.deepcopy(dataset.metadata),
                           files=list(dataset.files) if dataset.files is not None else None)


def _run_finished(services: Services, run_id: str) -> bool:
    try:
        return services.mlflow_client().get_run(run_id).info.status == "FINISHED"
    except Exception:
        return False
