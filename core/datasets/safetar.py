"""Safe tar extraction: every member is checked before anything is written.

Refused (with :class:`UnsafeArchiveError` naming the member): absolute paths, ``..`` components,
symlinks or hard links whose target lies outside the destination (or that another member would
be written through), character/block devices and FIFOs. On refusal nothing is extracted.
"""

from __future__ import annotations

import posixpath
import tarfile
from pathlib import Path, PurePosixPath

from .errors import DatasetError, UnsafeArchiveError


def _inside(path: str) -> bool:
    """Whether a normalised relative posix path stays inside the root."""
    norm = posixpath.normpath(path)
    return norm != ".." and not norm.startswith("../") and not posixpath.isabs(norm)


def check_members(tar: tarfile.TarFile, label: str = "archive") -> list[tarfile.TarInfo]:
    """Validate every member of ``tar``; return them, or raise :class:`UnsafeArchiveError`."""
    members = tar.getmembers()
    links: set[str] = set()
    for m in members:
        name = m.name
        def refuse(why: str, name: str = name) -> UnsafeArchiveError:
            return UnsafeArchiveError(f"refusing to extract {label}: member '{name}' {why}; nothing was extracted")
        if "\x00" in name or not name.strip():
            raise refuse("has an empty or invalid name")
        if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
            raise refuse("has an absolute path")
        parts = name.replace("\\", "/").split("/")
        if ".." in parts:
            raise refuse("has '..' in its path")
        norm = posixpath.normpath(name)
        if any(norm == link or norm.startswith(link + "/") for link in links):
            raise refuse("would be written through a link in the archive")
        if m.ischr() or m.isblk():
            raise refuse("is a device file")
        if m.isfifo():
            raise refuse("is a FIFO")
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise refuse(f"has an unsupported type ({m.type!r})")
        if m.issym():
            target = m.linkname
            if not target or posixpath.isabs(target) or not _inside(posixpath.join(posixpath.dirname(norm), target)):
                raise refuse(f"is a symlink pointing outside the destination ('{target}')")
            links.add(norm)
        elif m.islnk():
            target = m.linkname
            if not target or posixpath.isabs(target) or ".." in target.split("/") or not _inside(target):
                raise refuse(f"is a hard link pointing outside the destination ('{target}')")
            links.add(norm)
    return members


def safe_extract(tar: str | Path | tarfile.TarFile, dest: str | Path) -> Path:
    """Extract ``tar`` (a path or an open ``TarFile``) into ``dest`` after checking every member.

    Returns ``dest``. Raises :class:`UnsafeArchiveError` (nothing extracted) for hostile members and
    :class:`DatasetError` for an unreadable archive.
    """
    dest = Path(dest)
    if isinstance(tar, tarfile.TarFile):
        return _extract(tar, dest, f"'{Path(tar.name).name if tar.name else 'archive'}'")
    path = Path(tar)
    try:
        with tarfile.open(path, "r:*") as handle:
            return _extract(handle, dest, f"'{path.name}'")
    except tarfile.TarError as exc:
        raise DatasetError(f"cannot read tar archive '{path}': {exc}") from None


def _extract(tar: tarfile.TarFile, dest: Path, label: str) -> Path:
    try:
        members = check_members(tar, label)
    except tarfile.TarError as exc:
        raise DatasetError(f"cannot read tar archive {label}: {exc}") from None
    dest.mkdir(parents=True, exist_ok=True)
    # Second line of defence: the stdlib 'data' filter refuses the same things again.
    tar.extractall(dest, members=members, filter="data")
    return dest
