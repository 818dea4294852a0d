"""Loading an image dataset from a folder of class subfolders: scan, parallel decode, cache.

Layout: ``ROOT/<class>/<image>``, any image format PIL reads, grayscale or colour, any size.
An optional ``ROOT/gnomon-dataset.json`` (written by :func:`write_dataset_artifact`) supplies
the class names, the sample order and the provenance metadata.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._util import IMAGE_SUFFIXES, natural_key, resolve_progress, run_chunks, worker_count
from .dataset import ImageDataset, to_float
from .errors import DatasetError

MANIFEST = "gnomon-dataset.json"
#: Written last into a folder gnomon built itself (``gnomon data mnist``): see :func:`seal_folder`.
SEAL = ".gnomon-seal.json"
_SEAL_VERSION = 1
#: Keys of gnomon-dataset.json that describe the files rather than their provenance.
STRUCTURAL_KEYS = ("gnomon_dataset_format", "class_names", "files", "image_shape", "n_images", "pixel_format")
COLOR_MODES = ("grayscale", "rgb")
_CACHE_VERSION = 1


@dataclass
class FolderScan:
    """What is in a dataset folder, without decoding anything."""

    root: Path
    class_names: list[str]
    files: list[str]  # "<class>/<name>", in dataset order
    labels: np.ndarray
    stats: list[tuple[int, int]]  # (size, mtime_ns) per file, same order
    manifest: dict[str, Any]
    manifest_stat: tuple[int, int] | None
    dir_stats: list[tuple[int, int]] = field(default_factory=list)  # (size, mtime_ns) of root + class dirs
    sealed: bool = False  # listed from a valid seal (see seal_folder), not from the file system


def _normalise_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise DatasetError(f"image_size must be an int or (height, width); got {image_size!r}") from None
    if h <= 0 or w <= 0:
        raise DatasetError(f"image_size must be positive; got {image_size!r}")
    return h, w


def _normalise_color(color_mode: str | None) -> str | None:
    if color_mode is None:
        return None
    mode = str(color_mode).lower()
    mode = {"gray": "grayscale", "grey": "grayscale", "greyscale": "grayscale", "l": "grayscale"}.get(mode, mode)
    if mode not in COLOR_MODES:
        raise DatasetError(f"color_mode must be one of {', '.join(COLOR_MODES)} (or None to keep); got {color_mode!r}")
    return mode


def read_manifest(root: Path) -> dict[str, Any]:
    """The parsed ``gnomon-dataset.json`` of ``root`` ({} if absent); a broken one is an error."""
    path = root / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read dataset metadata '{path}': {exc}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"dataset metadata '{path}' must hold a JSON object")
    return data


def _list_class(root: Path, cls: str, stat: bool = True) -> tuple[list[str], list[int], list[int]]:
    """Names, sizes and mtimes (ns) of the images in ``root/cls``, in directory order.

    With ``stat=False`` only the names are listed (sizes and mtimes are 0): no per-file system call.
    """
    names, sizes, mtimes = [], [], []
    with os.scandir(root / cls) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES) or not entry.is_file():
                continue
            names.append(name)
            if stat:
                st = entry.stat()
                sizes.append(st.st_size)
                mtimes.append(st.st_mtime_ns)
    if not stat:
        sizes = mtimes = [0] * len(names)
    return names, sizes, mtimes


VALIDATE_MODES = ("auto", "files", "dirs")


def validate_mode() -> str:
    """How the cache checks a folder: ``GNOMON_CACHE_VALIDATE`` = ``auto`` (default), ``files`` or ``dirs``.

    ``auto``: a folder sealed by gnomon (:func:`seal_folder`) whose class folders are untouched
    since is listed from its seal; any other folder is checked file by file (``files``).
    """
    from .. import settings

    mode = (settings.text("GNOMON_CACHE_VALIDATE") or "auto").strip().lower() or "auto"
    if mode not in VALIDATE_MODES:
        raise DatasetError(f"GNOMON_CACHE_VALIDATE must be one of {', '.join(VALIDATE_MODES)}; got {mode!r}")
    return mode


def sort_names(names: list[str]) -> list[str]:
    """File names in natural order (``2.png`` before ``10.png``).

    Fast path (all C-level) when every name is ``<number>.<ext>`` with one extension and no
    leading zeros, as in MNIST: then natural order is (length, text) order.
    """
    if not names:
        return []
    stem, dot, ext = names[0].partition(".")
    if dot and ext.isalpha():
        numbered = re.compile(r"^(?:0|[1-9][0-9]*)\." + re.escape(ext) + "$", re.MULTILINE)
        if len(numbered.findall("\n".join(names))) == len(names):
            out = sorted(names)
            out.sort(key=len)
            return out
    return sorted(names, key=natural_key)


def plain_name(name: str) -> bool:
    """Whether ``name`` is one plain file or folder name: not empty, no separator, not ``.``/``..``."""
    return bool(name.strip()) and "/" not in name and "\\" not in name and name not in (".", "..") \
        and "\x00" not in name


def class_names_for(manifest: dict[str, Any], folders: list[str], where: str = MANIFEST) -> list[str]:
    """The manifest's ``class_names`` (their order wins), then any other folder, sorted.

    Each listed name must be a plain folder name (not empty, no ``/`` or ``\\``, not ``.`` or
    ``..``): a manifest cannot send the loader outside the dataset folder. ``where`` names the
    manifest in the error.
    """
    listed = manifest.get("class_names") or []
    if not isinstance(listed, list):
        raise DatasetError(f"{where}: 'class_names' must be a list of folder names; got {type(listed).__name__}")
    names = [str(c) for c in listed]
    for name in names:
        if not plain_name(name):
            raise DatasetError(f"{where}: class name {name!r} is not a plain folder name (no '/', '\\', '..'); "
                               "refusing to read outside the dataset folder")
    if len(set(names)) != len(names):
        raise DatasetError(f"{where}: 'class_names' lists a name twice")
    return names + sorted(c for c in folders if c not in names)


def manifest_order(manifest: dict[str, Any], found: Any) -> list[str] | None:
    """The manifest's ``files`` if it lists exactly the files ``found``, else None."""
    listed = manifest.get("files")
    if isinstance(listed, list) and len(listed) == len(found) and set(listed) == set(found):
        return [str(f) for f in listed]
    return None


def order_files(manifest: dict[str, Any], found: Any, per_class: list[tuple[str, Any]]) -> list[str]:
    """Dataset order: the manifest's ``files`` if it lists exactly ``found``; else by class
    (``per_class`` is ``[(class, "<class>/<name>" paths)]`` in label order), then natural name order."""
    listed = manifest_order(manifest, found)
    if listed is not None:
        return listed
    files: list[str] = []
    for cls, rels in per_class:
        cut = len(cls) + 1
        files.extend(f"{cls}/{name}" for name in sort_names([r[cut:] for r in rels]))
    return files


def scan_folder(path: str | Path, *, stat_files: bool = True, use_seal: bool = False) -> FolderScan:
    """List the class folders and images of ``path`` (nothing decoded).

    With ``stat_files`` (default) every image's size and mtime is recorded; without, only the
    names, and ``dir_stats`` holds the (size, mtime) of the root and class folders instead.
    With ``use_seal`` a valid seal (:func:`seal_folder`) is used instead of listing the folder.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' does not exist or is not a folder "
                           "(expected <folder>/<class>/<image files>)")
    if use_seal:
        sealed = _sealed_scan(root)
        if sealed is not None:
            return sealed
    manifest = read_manifest(root)
    try:
        mst = (root / MANIFEST).stat()
        manifest_stat = (mst.st_size, mst.st_mtime_ns)
    except FileNotFoundError:
        manifest_stat = None
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    class_names = class_names_for(manifest, folders, str(root / MANIFEST))
    if not class_names:
        raise DatasetError(f"dataset folder '{root}' has no class subfolders (expected <folder>/<class>/<image files>)")
    existing = [(label, cls) for label, cls in enumerate(class_names) if (root / cls).is_dir()]
    if len(existing) > 1:
        from concurrent.futures import ThreadPoolExecutor

        # stat() releases the GIL: list the class folders concurrently
        with ThreadPoolExecutor(max_workers=min(4, len(existing))) as pool:
            listings = list(pool.map(lambda item: _list_class(root, item[1], stat_files), existing))
    else:
        listings = [_list_class(root, cls, stat_files) for _, cls in existing]
    dir_stats = [] if stat_files else [(st.st_size, st.st_mtime_ns) for st in
                                       [root.stat(), *((root / cls).stat() for _, cls in existing)]]
    total = sum(len(names) for names, _, _ in listings)
    if not total:
        raise DatasetError(f"dataset folder '{root}' has class folders ({', '.join(folders[:5])}"
                           f"{', ...' if len(folders) > 5 else ''}) but no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
    if manifest.get("files"):
        found = {f"{cls}/{n}": (label, size, mtime)
                 for (label, cls), (names, sizes, mtimes) in zip(existing, listings, strict=True)
                 for n, size, mtime in zip(names, sizes, mtimes, strict=True)}
        listed = manifest_order(manifest, found)
        if listed is not None:
            labels = np.fromiter((found[f][0] for f in listed), dtype=np.int64, count=len(listed))
            return FolderScan(root, class_names, listed, labels, [found[f][1:] for f in listed], manifest,
                              manifest_stat, dir_stats)
    files: list[str] = []
    stats: list[tuple[int, int]] = []
    labels = np.empty(total, dtype=np.int64)
    at = 0
    for (label, cls), (names, sizes, mtimes) in zip(existing, listings, strict=True):
        position = {n: i for i, n in enumerate(names)}
        ordered = sort_names(names)
        files.extend([f"{cls}/{n}" for n in ordered])
        stats.extend([(sizes[position[n]], mtimes[position[n]]) for n in ordered])
        labels[at:at + len(ordered)] = label
        at += len(ordered)
    return FolderScan(root, class_names, files, labels, stats, manifest, manifest_stat, dir_stats)


# -- seals ----------------------------------------------------------------------
def _stat_pair(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def seal_folder(path: str | Path, content: str | None = None) -> None:
    """Record ``path``'s listing in ``path/.gnomon-seal.json``, for folders gnomon built and never edits.

    The seal holds the class names, every file in dataset order, the mtime of each class folder
    and the manifest's (size, mtime), plus ``content`` (what the folder was made from, e.g. the
    sha256 of MNIST's IDX files). A later load (``GNOMON_CACHE_VALIDATE=auto``) trusts it while the
    set of class folders, their mtimes and the manifest are unchanged: adding, removing or
    renaming an image changes its class folder's mtime and voids the seal, so the folder is then
    scanned file by file again. An image rewritten *in place* under the same name does not change
    the folder's mtime: do not edit sealed folders by hand (``GNOMON_CACHE_VALIDATE=files`` never
    trusts seals).
    """
    root = Path(path).expanduser()
    scan = scan_folder(root, stat_files=False, use_seal=False)
    present = [c for c in scan.class_names if (root / c).is_dir()]
    labels = np.asarray(scan.labels, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) if len(labels) else np.zeros(0, np.int64)
    runs = [[int(labels[a]), int(b - a)] for a, b in zip(starts, [*starts[1:], len(labels)], strict=True)]
    data = {"seal": _SEAL_VERSION, "content": content, "class_names": scan.class_names,
            "class_mtimes": {c: (root / c).stat().st_mtime_ns for c in present},
            "manifest_stat": list(scan.manifest_stat) if scan.manifest_stat else None, "files": scan.files,
            "label_runs": runs}  # [label, count] runs in file order: labels without a pass over the names
    tmp = root / f"{SEAL}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, root / SEAL)


def _sealed_scan(root: Path) -> FolderScan | None:
    """The scan a valid seal records, or None (no seal, or the folder changed since it was sealed)."""
    try:
        data = json.loads((root / SEAL).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("seal") != _SEAL_VERSION:
        return None
    mtimes = data.get("class_mtimes") or {}
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if folders != sorted(mtimes):
        return None
    for cls, ns in mtimes.items():
        stat = _stat_pair(root / cls)
        if stat is None or stat[1] != ns:
            return None
    manifest_stat = _stat_pair(root / MANIFEST)
    if (list(manifest_stat) if manifest_stat else None) != data.get("manifest_stat"):
        return None
    class_names, files, runs = data.get("class_names"), data.get("files"), data.get("label_runs")
    if not (isinstance(class_names, list) and isinstance(files, list) and isinstance(runs, list)):
        return None
    try:
        labels = np.repeat(np.asarray([r[0] for r in runs], dtype=np.int64),
                           np.asarray([r[1] for r in runs], dtype=np.int64))
    except (TypeError, ValueError, IndexError):
        return None
    if len(labels) != len(files) or (len(labels) and not 0 <= labels.min() <= labels.max() < len(class_names)):
        return None
    # a seal is a file in the folder like any other: it must not name anything outside it
    if not all(isinstance(c, str) and plain_name(c) for c in class_names):
        return None
    for f in files:
        cls, sep, name = str(f).partition("/")
        if not sep or cls not in mtimes or not plain_name(name):
            return None
    manifest = read_manifest(root) if manifest_stat else {}
    dir_stats = [(0, int(mtimes[c])) for c in sorted(mtimes)]
    return FolderScan(root, class_names, files, labels, [], manifest, manifest_stat, dir_stats, sealed=True)


# -- decoding ---------------------------------------------------------------
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _decode_one(source: Any, image_size: tuple[int, int] | None, color_mode: str | None) -> np.ndarray:
    """One image (a path, or the encoded bytes) -> uint8 ``(h, w, c)``."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
        mode = im.mode
        if color_mode == "grayscale" or (color_mode is None and mode in _GRAY_MODES):
            if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
                im = Image.fromarray(np.clip(np.rint(arr * 255.0 / top), 0, 255).astype(np.uint8))
            else:
                im = im.convert("L")
        else:
            im = im.convert("RGB")
        if image_size is not None and im.size != (image_size[1], image_size[0]):
            im = im.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_blobs(where: str, files: list[str], blobs: list[bytes], image_size: tuple[int, int] | None,
                 color_mode: str | None) -> np.ndarray:
    """Like :func:`decode_chunk` for images already read into memory (e.g. from a tar)."""
    arrays = []
    for rel, blob in zip(files, blobs, strict=True):
        try:
            arrays.append(_decode_one(blob, image_size, color_mode))
        except Exception as exc:
            raise DatasetError(f"cannot read image '{rel}' in {where}: {type(exc).__name__}: {exc}") from None
    return stack_images(arrays, files)


def decode_chunk(root: str, files: list[str], image_size: tuple[int, int] | None,
                 color_mode: str | None) -> np.ndarray:
    """Decode ``files`` (relative to ``root``) into one uint8 array ``(k, h, w, c)``.

    With ``color_mode=None`` grayscale images stay 1-channel unless the chunk also holds colour
    images (then all become RGB). Different sizes without ``image_size`` are an error naming both files.
    """
    arrays = []
    for rel in files:
        try:
            arrays.append(_decode_one(os.path.join(root, rel), image_size, color_mode))
        except DatasetError:
            raise
        except Exception as exc:
            raise DatasetError(f"cannot read image '{rel}' in '{root}': {type(exc).__name__}: {exc}") from None
    return stack_images(arrays, files)


def stack_images(arrays: list[np.ndarray], files: list[str]) -> np.ndarray:
    """Stack decoded images, promoting grayscale to RGB when mixed; sizes must agree."""
    if not arrays:
        return np.zeros((0, 1, 1, 1), dtype=np.uint8)
    first = arrays[0].shape[:2]
    for arr, rel in zip(arrays, files, strict=True):
        if arr.shape[:2] != first:
            raise DatasetError(f"images differ in size: '{files[0]}' is {first[0]}x{first[1]} but '{rel}' is "
                               f"{arr.shape[0]}x{arr.shape[1]}; pass image_size=(height, width) to resize them")
    channels = max(a.shape[2] for a in arrays)
    if channels != min(a.shape[2] for a in arrays):
        arrays = [np.repeat(a, channels, axis=2) if a.shape[2] == 1 else a for a in arrays]
    return np.stack(arrays)


def _merge_chunks(chunks: list[np.ndarray], files: list[str]) -> np.ndarray:
    chunks = [c for c in chunks if len(c)]
    if len(chunks) == 1:
        return chunks[0]
    shapes = {c.shape[1:3] for c in chunks}
    if len(shapes) > 1:
        (h1, w1), (h2, w2) = sorted(shapes)[:2]
        raise DatasetError(f"images differ in size ({h1}x{w1} and {h2}x{w2}); pass image_size=(height, width) to resize them")
    channels = max(c.shape[3] for c in chunks)
    chunks = [np.repeat(c, channels, axis=3) if c.shape[3] != channels else c for c in chunks]
    return np.concatenate(chunks)


def decode_files(root: Path, files: list[str], image_size: tuple[int, int] | None, color_mode: str | None, *,
                 progress: Any = None, workers: int | None = None) -> np.ndarray:
    """Decode every file (in parallel processes for large folders) into one uint8 NHWC array."""
    progress_factory = resolve_progress(progress)
    n = len(files)
    workers = worker_count(n) if workers is None else max(1, int(workers))
    size = 1000 if workers <= 1 else max(500, -(-n // (workers * 8)))
    parts = [files[i:i + size] for i in range(0, n, size)]
    with progress_factory(f"decoding {root.name}", total=n) as advance:
        chunks = run_chunks(decode_chunk, [(str(root), part, image_size, color_mode) for part in parts],
                            workers, advance, [len(p) for p in parts])
    return _merge_chunks(chunks, files)


def decode_in_memory(where: str, files: list[str], blobs: list[bytes], image_size: tuple[int, int] | None,
                     color_mode: str | None, *, progress: Any = None, workers: int | None = None) -> np.ndarray:
    """Decode encoded images held in memory (parallel for many) into one uint8 NHWC array."""
    n = len(files)
    workers = worker_count(n) if workers is None else max(1, int(workers))
    size = 1000 if workers <= 1 else max(500, -(-n // (workers * 8)))
    starts = list(range(0, n, size))
    with resolve_progress(progress)(f"decoding {where}", total=n) as advance:
        chunks = run_chunks(decode_blobs, [(where, files[i:i + size], blobs[i:i + size], image_size, color_mode)
                                           for i in starts], workers, advance, [min(size, n - i) for i in starts])
    return _merge_chunks(chunks, files)


# -- cache ------------------------------------------------------------------
def cache_dir() -> Path:
    """Where decoded folders are cached: ``$GNOMON_HOME/cache/datasets``."""
    from ._util import gnomon_home

    return gnomon_home() / "cache" / "datasets"


def cache_key(scan: FolderScan, image_size: tuple[int, int] | None, color_mode: str | None) -> str:
    """sha256 of the folder's identity: path, options, and every file's name, size and mtime."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_VERSION, str(scan.root.resolve()), image_size, color_mode,
                         scan.manifest_stat, scan.class_names]).encode())
    h.update("\n".join(scan.files).encode())
    h.update(np.asarray(scan.stats, dtype=np.int64).tobytes())
    h.update(np.asarray(scan.dir_stats, dtype=np.int64).tobytes())
    return h.hexdigest()


def _cache_load(path: Path, n: int) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if arr.dtype != np.uint8 or arr.ndim != 4 or len(arr) != n:
        return None
    try:
        os.utime(path)  # recently used: evicted last
    except OSError:
        pass
    return arr


def cache_limit_bytes() -> int:
    """The cache's size cap: ``GNOMON_CACHE_MAX_MB`` (default 4096 MB)."""
    from .. import settings

    return int(settings.number("GNOMON_CACHE_MAX_MB", 4096) * 1e6)


def _evict(folder: Path, keep: Path) -> None:
    """Delete least-recently-used entries until the cache fits its cap (``keep`` is never deleted)."""
    entries = []
    for entry in folder.glob("*.npy"):
        try:
            st = entry.stat()
        except FileNotFoundError:
            continue
        entries.append((st.st_mtime, st.st_size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= cache_limit_bytes():
            break
        if entry != keep:
            entry.unlink(missing_ok=True)
            total -= size


def _cache_store(path: Path, arr: np.ndarray) -> None:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_image_folder_u8(path: str | Path, *, image_size: Any = None, color_mode: str | None = None,
                         cache: bool = True, progress: Any = None,
                         workers: int | None = None) -> tuple[np.ndarray, FolderScan]:
    """Like :func:`load_image_folder` but returns the raw uint8 array and the scan."""
    size = _normalise_size(image_size)
    mode = _normalise_color(color_mode)
    mode_ = validate_mode() if cache else "files"
    scan = scan_folder(path, stat_files=mode_ != "dirs", use_seal=mode_ == "auto")
    target = cache_dir() / f"{cache_key(scan, size, mode)}.npy" if cache else None
    if target is not None and target.is_file():
        arr = _cache_load(target, len(scan.files))
        if arr is not None:
            return arr, scan
    arr = decode_files(scan.root, scan.files, size, mode, progress=progress, workers=workers)
    if target is not None:
        try:
            _cache_store(target, arr)
            _evict(target.parent, target)
        except OSError:  # a read-only home must not break loading
            pass
    return arr, scan


def load_image_folder(path: str | Path, *, image_size: Any = None, color_mode: str | None = None,
                      cache: bool = True, progress: Any = None, workers: int | None = None) -> ImageDataset:
    """Load ``path/<class>/<image>`` into an :class:`ImageDataset` (x float32 NHWC in [0, 1]).

    Args:
        path: folder of class subfolders (class names = sorted folder names, or the
            ``class_names`` of its ``gnomon-dataset.json``).
        image_size: ``(height, width)`` or an int; images are resized (bilinear) to it.
            Without it all images must have the same size.
        color_mode: ``"grayscale"`` (1 channel), ``"rgb"`` (3 channels) or ``None`` (keep:
            grayscale if every image is grayscale, else RGB).
        cache: reuse/store the decoded uint8 array in ``$GNOMON_HOME/cache/datasets``, keyed on
            the folder's file names, sizes and mtimes and these options. A folder gnomon sealed
            (``gnomon data mnist``; see :func:`seal_folder`) is keyed on its seal instead, with no
            listing at all. ``GNOMON_CACHE_VALIDATE=files`` ignores seals; ``=dirs`` keys every
            folder on its file names and the class folders' mtimes (no per-file ``stat``, but a
            file rewritten in place under the same name goes unnoticed).
        progress: ``None``/``True`` rich bar, ``False`` silent, or a RunContext / progress factory.
        workers: decoding processes (default: CPUs, 1 for small folders; ``GNOMON_WORKERS``).

    Order: the ``files`` order of ``gnomon-dataset.json`` when it lists exactly the files
    present, else by class then natural file-name order. ``metadata`` comes from
    ``gnomon-dataset.json`` (minus its structural keys), with ``source`` defaulting to the folder.
    """
    arr, scan = load_image_folder_u8(path, image_size=image_size, color_mode=color_mode, cache=cache,
                                     progress=progress, workers=workers)
    metadata = {k: v for k, v in scan.manifest.items() if k not in STRUCTURAL_KEYS}
    metadata.setdefault("source", str(scan.root))
    return ImageDataset(to_float(arr), scan.labels, scan.class_names, metadata, scan.files)


def clear_cache() -> int:
    """Delete every cached dataset array; returns the number of files removed."""
    removed = 0
    folder = cache_dir()
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.suffix == ".npy" or entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)
                removed += 1
    return removed
