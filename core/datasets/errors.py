"""Errors raised by the dataset code; all are :class:`GnomonError` (one line, no traceback in the CLI)."""

from __future__ import annotations

from gnomon.core.errors import GnomonError


class DatasetError(GnomonError):
    """A dataset folder, artifact or source is missing or malformed."""


class UnsafeArchiveError(DatasetError):
    """A tar archive holds a member that would escape the extraction folder (nothing was extracted)."""


class ChecksumError(DatasetError):
    """A downloaded or local file does not have the expected sha256."""


class MnistSourceError(DatasetError):
    """MNIST could not be obtained from any source (offline with no local copy, bad URL, ...)."""
