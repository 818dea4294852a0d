"""The MNIST IDX file format: finding the four files, reading (gzip or not), sha256 checks."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from .errors import ChecksumError, DatasetError

#: The four standard files, by split: (images, labels).
SPLIT_FILES = {
    "training": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "testing": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
BASENAMES = tuple(name for pair in SPLIT_FILES.values() for name in pair)

#: sha256 of the UNCOMPRESSED full MNIST files (../shared/data/mnist/README.md).
FULL_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

_GZIP_MAGIC = b"\x1f\x8b"


def candidate_names(base: str) -> list[str]:
    """File names under which ``base`` may be stored (gzipped or not, '-idx' or '.idx')."""
    dotted = base.replace("-idx", ".idx")
    return [f"{base}.gz", base, f"{dotted}.gz", dotted]


def find_local_files(folder: Path) -> dict[str, Path]:
    """Map each of the four base names to its file in ``folder``; a clear error lists what is missing."""
    found, missing = {}, []
    for base in BASENAMES:
        for name in candidate_names(base):
            if (folder / name).is_file():
                found[base] = folder / name
                break
        else:
            missing.append(base)
    if missing:
        raise DatasetError(f"MNIST source folder '{folder}' lacks {', '.join(missing)} (.gz or uncompressed); "
                           f"expected the four standard IDX files: {', '.join(BASENAMES)}")
    return found


def read_raw(path: Path) -> bytes:
    """The uncompressed bytes of an IDX file (gzip detected by its magic number, not its name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head == _GZIP_MAGIC:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"cannot read MNIST file '{path}': {exc}") from None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_sha256sums(text: str) -> dict[str, str]:
    """``{file name: sha256}`` from a ``sha256sum``-style file (``.gz`` suffixes stripped)."""
    sums = {}
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) >= 2 and len(parts[0]) == 64:
            name = parts[-1].lstrip("*")
            name = name[:-3] if name.endswith(".gz") else name
            sums[Path(name).name.replace(".idx", "-idx")] = parts[0].lower()
    return sums


def verify(base: str, digest: str, sums: dict[str, str] | None, where: str) -> None:
    """Accept ``digest`` if it is full MNIST's or the one ``sums`` (a SHA256SUMS file) lists for ``base``."""
    if digest == FULL_MNIST_SHA256[base]:
        return
    if sums is None:
        raise ChecksumError(f"MNIST file {base} from {where} has sha256 {digest}, not the full-MNIST "
                            f"{FULL_MNIST_SHA256[base]}, and there is no SHA256SUMS next to it to vouch for it")
    expected = sums.get(base)
    if expected is None:
        raise ChecksumError(f"SHA256SUMS at {where} does not list {base}, and its sha256 {digest} "
                            "is not the full-MNIST one")
    if digest != expected:
        raise ChecksumError(f"MNIST file {base} from {where} is corrupt: sha256 {digest}, SHA256SUMS says {expected}")


def parse_images(data: bytes, name: str) -> np.ndarray:
    """uint8 ``(n, rows, cols)`` from IDX3 bytes, checking the header against the size."""
    if len(data) < 16 or int.from_bytes(data[:4], "big") != 0x803:
        raise DatasetError(f"MNIST file {name} is not an IDX3 image file (bad magic number)")
    n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    if len(data) != 16 + n * rows * cols:
        raise DatasetError(f"MNIST file {name} is truncated: header says {n}x{rows}x{cols}, "
                           f"file holds {len(data) - 16} pixel bytes")
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)


def parse_labels(data: bytes, name: str) -> np.ndarray:
    """uint8 ``(n,)`` labels from IDX1 bytes."""
    if len(data) < 8 or int.from_bytes(data[:4], "big") != 0x801:
        raise DatasetError(f"MNIST file {name} is not an IDX1 label file (bad magic number)")
    n = int.from_bytes(data[4:8], "big")
    if len(data) != 8 + n:
        raise DatasetError(f"MNIST file {name} is truncated: header says {n} labels, file holds {len(data) - 8}")
    labels = np.frombuffer(data, np.uint8, offset=8)
    if n and labels.max() > 9:
        raise DatasetError(f"MNIST file {name} has label {int(labels.max())} (expected 0..9)")
    return labels
