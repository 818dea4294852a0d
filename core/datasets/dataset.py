"""The in-memory image dataset, 8-bit quantisation and the seeded train/validation split."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

_INV = np.float32(255.0)


def to_float(images_u8: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1] (``v / 255``), the one conversion every reader uses."""
    out = np.asarray(images_u8).astype(np.float32)
    np.divide(out, _INV, out=out)  # in place: one allocation, exact IEEE division
    return out


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float images in [0, 1] -> uint8 by rounding to the nearest 1/255 (values outside are clipped)."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint(x * _INV), 0, 255).astype(np.uint8)


def quantize(x: np.ndarray) -> np.ndarray:
    """Round float images to the nearest 1/255, exactly as a dataset artifact (8-bit PNG) stores them.

    ``read_dataset_artifact(...).x`` equals ``quantize(x)`` bit for bit, so a producer that
    evaluates on ``quantize(x)`` reports the numbers a consumer of the artifact will see.
    """
    return to_float(to_uint8(x))


@dataclass
class ImageDataset:
    """Images with integer labels, class names and provenance.

    Attributes:
        x: float32 array ``(n, height, width, channels)`` with values in [0, 1].
        y: int64 array ``(n,)`` of class indices into ``class_names``.
        class_names: class folder names, index = label (MNIST: ``"0"`` .. ``"9"``).
        metadata: provenance (see docs/architecture.md "Datasets": ``target_class``, ``trigger``,
            ``poisoned_files``, ``produced_by``, ``source``, ``defenses``, ...).
        files: relative paths ``"<class>/<file>.png"`` in the order of ``x``/``y``;
            ``None`` for data that never lived in a folder.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    files: list[str] | None = None

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x)
        if self.x.dtype != np.float32:
            self.x = self.x.astype(np.float32)
        if self.x.ndim == 3:  # (n, h, w) -> (n, h, w, 1)
            self.x = self.x[..., None]
        if self.x.ndim != 4:
            raise ValueError(f"ImageDataset.x must be (n, height, width, channels); got shape {self.x.shape}")
        self.y = np.asarray(self.y).astype(np.int64, copy=False).reshape(-1)
        if len(self.y) != len(self.x):
            raise ValueError(f"ImageDataset has {len(self.x)} images but {len(self.y)} labels")
        self.class_names = [str(c) for c in self.class_names]
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.class_names)):
            raise ValueError(f"ImageDataset labels must lie in 0..{len(self.class_names) - 1} "
                             f"({len(self.class_names)} class names); got {self.y.min()}..{self.y.max()}")
        if self.files is not None:
            self.files = [str(f) for f in self.files]
            if len(self.files) != len(self.x):
                raise ValueError(f"ImageDataset has {len(self.x)} images but {len(self.files)} file names")
        self.metadata = dict(self.metadata or {})

    # -- shape --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.x)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)``."""
        return tuple(int(v) for v in self.x.shape[1:])  # type: ignore[return-value]

    def one_hot(self) -> np.ndarray:
        """Labels as a float32 one-hot matrix ``(n, n_classes)``."""
        out = np.zeros((len(self.y), self.n_classes), dtype=np.float32)
        out[np.arange(len(self.y)), self.y] = 1.0
        return out

    # -- poisoning ----------------------------------------------------------
    def poisoned_mask(self) -> np.ndarray:
        """Bool array, True for triggered samples.

        From ``metadata["poisoned_indices"]`` (in-memory producers) and/or
        ``metadata["poisoned_files"]`` matched against :attr:`files` (artifacts, folders).
        """
        mask = np.zeros(len(self), dtype=bool)
        indices = self.metadata.get("poisoned_indices")
        if indices is not None and len(indices):
            mask[np.asarray(indices, dtype=np.int64)] = True
        poisoned_files = self.metadata.get("poisoned_files")
        if poisoned_files and self.files is not None:
            wanted = set(poisoned_files)
            mask |= np.fromiter((f in wanted for f in self.files), dtype=bool, count=len(self))
        return mask

    @property
    def poison_known(self) -> bool:
        """True when the metadata says which samples were poisoned (possibly none of them).

        Every gnomon poisoning task records it (``poisoned_files`` in the artifact, an empty list
        when nothing was triggered); a clean folder, a hand-made tar or another tool's data
        does not, and then the ground truth is unknown rather than "all clean".
        """
        if self.metadata.get("poisoned_indices") is not None:
            return True
        return self.metadata.get("poisoned_files") is not None and (
            self.files is not None or not self.metadata["poisoned_files"])

    def poison_ground_truth(self) -> np.ndarray | None:
        """:meth:`poisoned_mask` when the poisoned samples are known (:attr:`poison_known`), else None.

        For scoring detectors (precision, recall against the truth). Raises
        :class:`~gnomon.core.datasets.errors.DatasetError` when ``poisoned_files`` names files this
        dataset does not hold: the marks then describe other data and would silently score wrong.
        """
        if not self.poison_known:
            return None
        poisoned_files = self.metadata.get("poisoned_files") or []
        if poisoned_files and self.files is not None:
            missing = set(poisoned_files).difference(self.files)
            if missing:
                from .errors import DatasetError

                shown = ", ".join(sorted(missing)[:3]) + (" ..." if len(missing) > 3 else "")
                raise DatasetError(f"the dataset's metadata marks {len(missing)} poisoned file(s) it does not hold "
                                   f"({shown}); its poisoning ground truth does not describe these samples")
        return self.poisoned_mask()

    # -- derived datasets ---------------------------------------------------
    def replace(self, **changes: Any) -> ImageDataset:
        """A copy with some attributes changed (metadata deep-copied unless given)."""
        values = {"x": self.x, "y": self.y, "class_names": list(self.class_names),
                  "metadata": copy.deepcopy(self.metadata), "files": None if self.files is None else list(self.files)}
        values.update(changes)
        return ImageDataset(**values)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """The samples at ``indices`` (an int array or bool mask), keeping poisoned marks consistent."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False)
        mask = self.poisoned_mask()[idx]
        metadata = copy.deepcopy(self.metadata)
        files = None if self.files is None else [self.files[i] for i in idx]
        if "poisoned_indices" in metadata or "poisoned_files" in metadata:
            metadata["poisoned_indices"] = np.flatnonzero(mask).tolist()
            if files is not None:
                metadata["poisoned_files"] = [f for f, m in zip(files, mask, strict=True) if m]
            else:
                metadata.pop("poisoned_files", None)
        return ImageDataset(self.x[idx], self.y[idx], list(self.class_names), metadata, files)

    def split(self, validation_fraction: float, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
        """See :func:`train_validation_split`."""
        return train_validation_split(self, validation_fraction, seed=seed)

    def quantized(self) -> ImageDataset:
        """This dataset with ``x`` rounded to 8 bits, as its artifact would hold it."""
        return self.replace(x=quantize(self.x))


def train_validation_split(dataset: ImageDataset, validation_fraction: float, *, seed: int = 0,
                           stratify: bool = True) -> tuple[ImageDataset, ImageDataset]:
    """Split into (train, validation) with a seeded shuffle; same seed, same split.

    ``validation_fraction`` in [0, 1). With ``stratify`` each class contributes its share
    (rounded), so small classes still appear in both parts. Order inside each part follows
    the seeded shuffle.
    """
    if not 0.0 <= float(validation_fraction) < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1); got {validation_fraction}")
    rng = np.random.default_rng(seed)
    n = len(dataset)
    if validation_fraction == 0 or n == 0:
        return dataset.subset(rng.permutation(n)), dataset.subset(np.array([], dtype=np.int64))
    val_parts, train_parts = [], []
    if stratify:
        for cls in range(dataset.n_classes):
            members = rng.permutation(np.flatnonzero(dataset.y == cls))
            k = int(round(len(members) * validation_fraction))
            val_parts.append(members[:k])
            train_parts.append(members[k:])
    else:
        order = rng.permutation(n)
        k = int(round(n * validation_fraction))
        val_parts, train_parts = [order[:k]], [order[k:]]
    val = rng.permutation(np.concatenate(val_parts)) if val_parts else np.array([], dtype=np.int64)
    train = rng.permutation(np.concatenate(train_parts))
    return dataset.subset(train), dataset.subset(val)
