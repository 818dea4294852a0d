"""MNIST acquisition: from a local folder, a URL prefix or the public mirrors, to PNG class folders.

``prepare_mnist(dest, source)`` writes ``dest/training/<label>/<n>.png`` and
``dest/testing/<label>/<n>.png`` (28x28 grayscale; ``n`` = index in the IDX file).
It is idempotent (``dest/.gnomon-mnist.json`` records the sha256 of the four uncompressed
files; a second call is a no-op) and atomic (built in a hidden folder beside ``dest`` and
renamed into place, so an interrupted run leaves no half-written ``dest``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import idx
from ._util import atomic_write_bytes, resolve_progress, run_chunks, worker_count
from .errors import DatasetError, MnistSourceError
from .folder import SEAL, seal_folder

MARKER = ".gnomon-mnist.json"
SPLITS = ("training", "testing")
#: Public mirrors tried in order when no source is given (``GNOMON_MNIST_MIRRORS`` overrides, comma-separated).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)
HINT = ("point gnomon at a local copy of the four MNIST IDX files with "
        "'gnomon data mnist --source DIR' or GNOMON_MNIST_SOURCE=DIR (a folder or URL prefix)")


@dataclass
class PrepareResult:
    """What :func:`prepare_mnist` did."""

    dest: Path
    created: bool
    hashes: dict[str, str]
    counts: dict[str, int] = field(default_factory=dict)
    source: str = ""


def default_mnist_dest() -> Path:
    """``$GNOMON_HOME/data/mnist``."""
    from ._util import gnomon_home

    return gnomon_home() / "data" / "mnist"


def is_url(source: str) -> bool:
    """Whether ``source`` is a URL prefix to download from (``file://`` paths count as folders)."""
    return source.startswith(("http://", "https://", "ftp://"))


def read_marker(dest: Path) -> dict[str, Any] | None:
    """The completion marker of a prepared folder, or None if ``dest`` is not a complete MNIST folder."""
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not marker.get("complete") or not isinstance(marker.get("hashes"), dict):
        return None
    if not all((dest / split).is_dir() for split in SPLITS):
        return None
    return marker


# -- sources --------------------------------------------------------------
def _source_key(source: str) -> Any:
    """A cheap identity of a source: for a folder, its files' names, sizes and mtimes."""
    if is_url(source):
        return {"url": source}
    folder = Path(source.removeprefix("file://")).expanduser()
    try:
        files = idx.find_local_files(folder)
    except DatasetError:
        return None
    stats = {}
    for base, path in files.items():
        st = path.stat()
        stats[base] = [path.name, st.st_size, st.st_mtime_ns]
    return {"folder": str(folder.resolve()), "files": stats}


def _timeout() -> float:
    from .. import settings

    return settings.number("GNOMON_DOWNLOAD_TIMEOUT", 30.0)


def _download(url: str, target: Path, progress_factory) -> None:
    """Stream ``url`` to ``target`` (urllib, timeout ``GNOMON_DOWNLOAD_TIMEOUT`` s)."""
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "gnomon (MNIST download)"})
    with urllib.request.urlopen(request, timeout=_timeout()) as response:
        total = response.headers.get("Content-Length")
        received = 0
        with open(target, "wb") as out, progress_factory(f"downloading {url.rsplit('/', 1)[-1]}",
                                                        total=int(total) if total else None) as advance:
            while True:
                block = response.read(1 << 16)
                if not block:
                    break
                out.write(block)
                received += len(block)
                advance(len(block))
        if total and received != int(total):
            raise OSError(f"connection closed after {received} of {total} bytes")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc) or type(exc).__name__


def _fetch_prefix(prefix: str, folder: Path, progress_factory) -> tuple[dict[str, Path], dict[str, str] | None]:
    """Download the four files (and SHA256SUMS if there is one) from URL ``prefix`` into ``folder``."""
    import urllib.error

    prefix = prefix if prefix.endswith("/") else prefix + "/"
    files = {}
    for base in idx.BASENAMES:
        errors = []
        for name in (f"{base}.gz", base):
            target = folder / name
            try:
                _download(prefix + name, target, progress_factory)
                files[base] = target
                break
            except urllib.error.HTTPError as exc:
                errors.append(f"{prefix + name}: HTTP {exc.code}")
                target.unlink(missing_ok=True)
                if exc.code != 404:
                    break
            except (urllib.error.URLError, OSError, ValueError) as exc:
                target.unlink(missing_ok=True)
                raise MnistSourceError(f"could not download {prefix + name}: {_reason(exc)}; {HINT}") from None
        else:
            raise MnistSourceError(f"could not download {base} from {prefix} ({'; '.join(errors)}); {HINT}")
        if base not in files:
            raise MnistSourceError(f"could not download {base} from {prefix} ({'; '.join(errors)}); {HINT}")
    sums = None
    try:
        _download(prefix + "SHA256SUMS", folder / "SHA256SUMS", resolve_progress(False))
        sums = idx.parse_sha256sums((folder / "SHA256SUMS").read_text(errors="replace"))
    except (urllib.error.URLError, OSError, ValueError):
        sums = None
    return files, sums


def _local_files(source: str) -> tuple[dict[str, Path], dict[str, str] | None]:
    folder = Path(source.removeprefix("file://")).expanduser()
    if not folder.is_dir():
        raise MnistSourceError(f"MNIST source '{source}' is not a folder or a URL; {HINT}")
    files = idx.find_local_files(folder)
    sums_path = folder / "SHA256SUMS"
    sums = idx.parse_sha256sums(sums_path.read_text(errors="replace")) if sums_path.is_file() else None
    return files, sums


def _mirrors() -> list[str]:
    from .. import settings

    return settings.names("GNOMON_MNIST_MIRRORS") or list(MIRRORS)


def load_source(source: str | None, workdir: Path, progress_factory) -> tuple[dict[str, bytes], dict[str, str], str]:
    """The verified uncompressed bytes of the four files, their sha256, and a description of the source.

    ``source``: a folder, a URL prefix, or ``None`` for the public mirrors.
    """
    if source is None:
        failures = []
        for mirror in _mirrors():
            try:
                files, sums = _fetch_prefix(mirror, workdir, progress_factory)
                where = mirror
                break
            except MnistSourceError as exc:
                failures.append(str(exc).split("; point gnomon")[0])
        else:
            raise MnistSourceError(f"MNIST is not prepared and no mirror could be reached "
                                   f"({' | '.join(failures)}); offline? {HINT}")
    elif is_url(source):
        files, sums = _fetch_prefix(source, workdir, progress_factory)
        where = source
    else:
        files, sums = _local_files(source)
        where = str(source)
    raw, hashes = {}, {}
    for base in idx.BASENAMES:
        data = idx.read_raw(files[base])
        digest = idx.sha256(data)
        idx.verify(base, digest, sums, where)
        raw[base], hashes[base] = data, digest
    return raw, hashes, where


# -- writing ----------------------------------------------------------------
def _write_pngs(folder: str, start: int, images: np.ndarray, labels: np.ndarray) -> int:
    from PIL import Image

    for offset, (img, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(img, mode=None).save(os.path.join(folder, str(int(label)), f"{start + offset}.png"))
    return len(images)


def write_split(folder: Path, images: np.ndarray, labels: np.ndarray, progress_factory, description: str) -> None:
    """Write ``folder/<label>/<n>.png`` for every image (parallel processes for large splits)."""
    if len(images) != len(labels):
        raise DatasetError(f"MNIST {folder.name}: {len(images)} images but {len(labels)} labels")
    for label in range(10):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
    n = len(images)
    workers = worker_count(n, per_worker_min=5000)
    step = 2000
    starts = list(range(0, n, step))
    with progress_factory(description, total=n) as advance:
        run_chunks(_write_pngs, [(str(folder), s, images[s:s + step], labels[s:s + step]) for s in starts],
                   workers, advance, [min(step, n - s) for s in starts])


def _remove_stale_partials(dest: Path) -> None:
    """Delete build (and moved-aside) folders of earlier runs that died (their process no longer exists)."""
    prefixes = (f".{dest.name}.partial-", f".{dest.name}.old-")
    if not dest.parent.is_dir():
        return
    for entry in dest.parent.iterdir():
        prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
        if prefix is None:
            continue
        try:
            pid = int(entry.name[len(prefix):].split("-")[0])
            os.kill(pid, 0)
            continue  # still running
        except (ValueError, ProcessLookupError):
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:
            continue


def prepare_mnist(dest: str | Path | None = None, source: str | None = None, *, progress: Any = None,
                  force: bool = False) -> PrepareResult:
    """Prepare MNIST as PNG class folders in ``dest`` (default ``$GNOMON_HOME/data/mnist``).

    ``source``: a folder of the four IDX files (.gz or not), a URL prefix, or ``None`` for
    ``GNOMON_MNIST_SOURCE`` and then (only if ``dest`` is not prepared yet) the public mirrors.
    SHA256 of the uncompressed files must be full MNIST's or match a ``SHA256SUMS`` next to them.
    Returns a :class:`PrepareResult`; ``created`` is False when ``dest`` already held that data.
    """
    dest = Path(dest).expanduser() if dest else default_mnist_dest()
    from .. import settings

    source = source or settings.text("GNOMON_MNIST_SOURCE")
    progress_factory = resolve_progress(progress)
    marker = read_marker(dest)
    if marker is not None and not force:
        key = _source_key(source) if source is not None else None
        if source is None or (key is not None and key == marker.get("source_key")):
            _seal_prepared(dest, marker)
            return PrepareResult(dest, False, marker["hashes"], marker.get("counts", {}), marker.get("source", ""))
    if marker is None and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DatasetError(f"refusing to write MNIST into '{dest}': it exists and is not a folder prepared by "
                           "'gnomon data mnist' (no .gnomon-mnist.json); remove it or choose another --dest")

    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(dest)
    build = dest.parent / f".{dest.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    build.mkdir()
    try:
        download_dir = build / ".download"
        download_dir.mkdir()
        raw, hashes, where = _load_source_once(source, download_dir, progress_factory, dest)
        if marker is not None and not force and marker["hashes"] == hashes:
            # same data from another place: nothing to rewrite, remember the new source
            marker["source"], marker["source_key"] = where, _source_key(source) if source else None
            atomic_write_bytes(dest / MARKER, json.dumps(marker, indent=2, sort_keys=True).encode())
            _seal_prepared(dest, marker)
            return PrepareResult(dest, False, hashes, marker.get("counts", {}), where)
        counts = {}
        for split, (img_name, lab_name) in idx.SPLIT_FILES.items():
            images = idx.parse_images(raw[img_name], img_name)
            labels = idx.parse_labels(raw[lab_name], lab_name)
            if len(images) != len(labels):
                raise DatasetError(f"MNIST {split}: {img_name} has {len(images)} images but {lab_name} "
                                   f"has {len(labels)} labels")
            write_split(build / split, images, labels, progress_factory, f"writing MNIST {split}")
            seal_folder(build / split, content=_content_id(hashes, split))
            counts[split] = int(len(images))
        shutil.rmtree(download_dir)
        marker_data = {"complete": True, "format": 1, "hashes": hashes, "counts": counts, "source": where,
                       "source_key": _source_key(source) if source else None,
                       "layout": "<split>/<label>/<index>.png, 28x28 8-bit grayscale"}
        (build / MARKER).write_text(json.dumps(marker_data, indent=2, sort_keys=True))
        _swap_into_place(build, dest, None if force else hashes)
    finally:
        if build.exists():  # failed, interrupted, or nothing to do
            shutil.rmtree(build, ignore_errors=True)
    return PrepareResult(dest, True, hashes, counts, where)


#: Within :func:`failures_remembered`: {(dest, source, mirrors): message} of MNIST that could not be had.
_FAILURES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("gnomon_mnist_failures", default=None)


@contextlib.contextmanager
def failures_remembered():
    """Within the block, MNIST that could not be fetched is not tried again from the same places.

    The same :class:`MnistSourceError` is raised at once instead, so checking every step of an
    offline workflow tries the mirrors once, not once per step (and the error can be said once).
    """
    token = _FAILURES.set({})
    try:
        yield
    finally:
        _FAILURES.reset(token)


def _load_source_once(source, workdir, progress_factory, dest):
    remembered = _FAILURES.get()
    key = (str(dest), source, tuple(_mirrors()) if source is None else ())
    if remembered is not None and key in remembered:
        raise MnistSourceError(remembered[key])
    try:
        return load_source(source, workdir, progress_factory)
    except MnistSourceError as exc:
        if remembered is not None:
            remembered[key] = str(exc)
        raise


def _content_id(hashes: dict[str, str], split: str) -> str:
    img_name, lab_name = idx.SPLIT_FILES[split]
    return f"mnist/{split}: sha256 {hashes.get(img_name, '?')} {hashes.get(lab_name, '?')}"


def _seal_prepared(dest: Path, marker: dict[str, Any]) -> None:
    """Seal the splits of a folder prepared before seals existed (gnomon wrote it: trust it as it is)."""
    for split in idx.SPLIT_FILES:
        if (dest / split).is_dir() and not (dest / split / SEAL).is_file():
            try:
                seal_folder(dest / split, content=_content_id(marker.get("hashes", {}), split))
            except (OSError, DatasetError):  # read-only or damaged: loads fall back to a full scan
                pass


def _swap_into_place(build: Path, dest: Path, hashes: dict[str, str] | None = None) -> None:
    """Rename ``build`` to ``dest``; an existing prepared ``dest`` is moved aside first, then deleted.

    If another process has meanwhile prepared ``dest`` with the same ``hashes``, ``build`` is
    discarded instead, so readers of that folder are never disturbed.
    """
    old = None
    current = read_marker(dest)
    if hashes is not None and current is not None and current.get("hashes") == hashes:
        shutil.rmtree(build, ignore_errors=True)
        return
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
            old = None
        else:
            os.rename(dest, old)
    try:
        os.rename(build, dest)
    except OSError:
        if old is not None:
            os.rename(old, dest)
        if read_marker(dest) is not None:  # another process finished first
            shutil.rmtree(build, ignore_errors=True)
            return
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def mnist_dir(split: str = "testing", *, progress: Any = None) -> Path:
    """The prepared MNIST ``training`` or ``testing`` folder, preparing it on first use.

    Source: ``GNOMON_MNIST_SOURCE``, else the already-prepared ``$GNOMON_HOME/data/mnist``,
    else the public mirrors (offline: a :class:`MnistSourceError` saying how to point at a local copy).
    """
    if split not in SPLITS:
        raise DatasetError(f"MNIST split must be one of {', '.join(SPLITS)}; got {split!r}")
    result = prepare_mnist(progress=progress)
    return result.dest / split
