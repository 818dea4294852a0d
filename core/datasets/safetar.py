"""Safe, bounded tar reading: every member is checked before anything is written or read.

Refused (with :class:`UnsafeArchiveError` naming the member): absolute paths, ``..`` components,
symlinks or hard links whose target lies outside the destination, that another member would be
written through, or that do not point at a file or folder earlier in the archive (so chains and
loops of links, and dangling links, are refused too); character/block devices, FIFOs, sparse
files (a few KB of archive that claim gigabytes of zeros) and unknown member types.

Sizes are bounded (:class:`TarLimits`, from ``GNOMON_TAR_MAX_MEMBER_MB``,
``GNOMON_TAR_MAX_TOTAL_MB`` and ``GNOMON_TAR_MAX_MEMBERS``): a member larger than the per-member
limit, members adding up to more than the total, too many members, or an extended (pax / GNU
long name) header over 1 MB are refused as soon as their header is read, before their data is
decompressed, so a compression bomb costs neither memory nor time. Members are checked as the
archive streams by (:func:`check_members`); nothing is read into memory whole.

:func:`safe_extract` extracts into a temporary folder next to the destination and moves the
result into place only when everything succeeded: on refusal the destination is untouched.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import DatasetError, UnsafeArchiveError

#: Largest pax extended header or GNU long-name record read (tarfile reads them whole).
MAX_HEADER_BYTES = 2**20


@dataclass(frozen=True)
class TarLimits:
    """How much one archive may hold: bytes per member, bytes in all, number of members."""

    max_member: int = 64 * 2**20
    max_total: int = 2048 * 2**20
    max_members: int = 1_000_000

    @classmethod
    def from_settings(cls, environ: Mapping[str, str] | None = None) -> TarLimits:
        """The limits set by ``GNOMON_TAR_MAX_MEMBER_MB``, ``GNOMON_TAR_MAX_TOTAL_MB``, ``GNOMON_TAR_MAX_MEMBERS``."""
        from .. import settings

        return cls(max_member=settings.tar_max_member_bytes(environ), max_total=settings.tar_max_total_bytes(environ),
                   max_members=settings.tar_max_members(environ))


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n:,} bytes"


class BoundedTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` that refuses, while the archive is being read, what tarfile would load whole.

    tarfile reads a pax extended header or a GNU long name into memory in one piece, and expands
    sparse maps as it parses them, before any caller sees the member; these hooks run first.
    (They override private ``tarfile.TarInfo`` methods, stable since Python 3.2.)
    """

    #: how error messages name the archive (set per archive by :func:`open_tar`)
    label = "archive"

    def _proc_member(self, tarfile_):
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                         tarfile.SOLARIS_XHDTYPE) and self.size > MAX_HEADER_BYTES:
            raise UnsafeArchiveError(f"refusing to read {self.label}: an extended header of {_mb(self.size)} at "
                                     f"offset {self.offset} is over the {_mb(MAX_HEADER_BYTES)} limit; "
                                     "nothing was extracted")
        return super()._proc_member(tarfile_)

    def _sparse(self, name: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"refusing to extract {self.label}: member '{name}' is a sparse file (not allowed "
                                  "in datasets or bundles); nothing was extracted")

    def _proc_sparse(self, tarfile_):
        raise self._sparse(self.name)

    def _proc_gnusparse_00(self, next, pax_headers, buf):
        raise self._sparse(pax_headers.get("GNU.sparse.name", next.name))

    def _proc_gnusparse_01(self, next, pax_headers):
        raise self._sparse(pax_headers.get("GNU.sparse.name", next.name))

    def _proc_gnusparse_10(self, next, pax_headers, tarfile_):
        raise self._sparse(pax_headers.get("GNU.sparse.name", next.name))


def open_tar(path: str | Path, label: str | None = None) -> tarfile.TarFile:
    """Open ``path`` for reading (any compression) with the header guards of :class:`BoundedTarInfo`."""
    path = Path(path)
    label = label or f"'{path.name}'"
    info_class = type("BoundedTarInfo", (BoundedTarInfo,), {"label": label})
    try:
        return tarfile.open(path, "r:*", tarinfo=info_class)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"cannot read tar archive {label}: {exc}") from None


def _inside(path: str) -> bool:
    """Whether a normalised relative posix path stays inside the root."""
    norm = posixpath.normpath(path)
    return norm != ".." and not norm.startswith("../") and not posixpath.isabs(norm)


def check_members(tar: tarfile.TarFile, label: str = "archive", limits: TarLimits | None = None) -> list[tarfile.TarInfo]:
    """Validate every member of ``tar`` as it streams by; return them, or raise :class:`UnsafeArchiveError`.

    ``limits`` defaults to :meth:`TarLimits.from_settings`. A member over a limit is refused from
    its header, before its data is read.
    """
    limits = limits or TarLimits.from_settings()
    members: list[tarfile.TarInfo] = []
    links: set[str] = set()
    files: set[str] = set()     # regular files seen so far (normalised)
    folders: set[str] = {"."}   # folders seen so far, explicit or implied by a member's path
    total = 0
    try:
        for m in tar:
            name = m.name

            def refuse(why: str, name: str = name) -> UnsafeArchiveError:
                return UnsafeArchiveError(f"refusing to extract {label}: member '{name}' {why}; nothing was extracted")
            if len(members) >= limits.max_members:
                raise refuse(f"is past the limit of {limits.max_members:,} members (GNOMON_TAR_MAX_MEMBERS)")
            if "\x00" in name or not name.strip():
                raise refuse("has an empty or invalid name")
            if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
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
            if m.issparse():
                raise refuse("is a sparse file (not allowed in datasets or bundles)")
            if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                raise refuse(f"has an unsupported type ({m.type!r})")
            if m.isfile():
                if m.size > limits.max_member:
                    raise refuse(f"is {_mb(m.size)}, over the limit of {_mb(limits.max_member)} per member "
                                 "(GNOMON_TAR_MAX_MEMBER_MB)")
                total += m.size
                if total > limits.max_total:
                    raise refuse(f"brings the archive to {_mb(total)}, over the limit of {_mb(limits.max_total)} in all "
                                 "(GNOMON_TAR_MAX_TOTAL_MB)")
            if m.issym() or m.islnk():
                target = m.linkname
                kind = "symlink" if m.issym() else "hard link"
                resolved = posixpath.join(posixpath.dirname(norm), target) if m.issym() else target
                if not target or posixpath.isabs(target) or (m.islnk() and ".." in target.split("/")) \
                        or not _inside(resolved):
                    raise refuse(f"is a {kind} pointing outside the destination ('{target}')")
                resolved = posixpath.normpath(resolved)
                if any(resolved == link or resolved.startswith(link + "/") for link in links):
                    raise refuse(f"is a {kind} to or through another link ('{target}'); chains of links are refused")
                if resolved not in files and (m.islnk() or resolved not in folders):
                    raise refuse(f"is a {kind} to '{target}', which is not a file or folder earlier in the archive")
                links.add(norm)
            else:
                (files if m.isfile() else folders).add(norm)
                parent = posixpath.dirname(norm)
                while parent and parent not in folders:
                    folders.add(parent)
                    parent = posixpath.dirname(parent)
            members.append(m)
    except (tarfile.TarError, EOFError) as exc:
        raise DatasetError(f"cannot read tar archive {label}: {exc}") from None
    return members


def safe_extract(tar: str | Path | tarfile.TarFile, dest: str | Path, limits: TarLimits | None = None) -> Path:
    """Extract ``tar`` (a path or an open ``TarFile``) into ``dest`` after checking every member.

    Returns ``dest``. Raises :class:`UnsafeArchiveError` for hostile members or an archive over
    ``limits`` and :class:`DatasetError` for an unreadable archive; in both cases ``dest`` is left
    as it was (extraction happens in a temporary sibling folder, moved into place at the end).
    """
    dest = Path(dest)
    if isinstance(tar, tarfile.TarFile):
        return _extract(tar, dest, f"'{Path(tar.name).name if tar.name else 'archive'}'", limits)
    path = Path(tar)
    with open_tar(path) as handle:
        return _extract(handle, dest, f"'{path.name}'", limits)


def _extract(tar: tarfile.TarFile, dest: Path, label: str, limits: TarLimits | None) -> Path:
    members = check_members(tar, label, limits)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        try:
            # Second line of defence: the stdlib 'data' filter refuses the same things again.
            tar.extractall(staging, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise UnsafeArchiveError(f"refusing to extract {label}: {exc}; nothing was extracted") from None
        except (tarfile.TarError, EOFError, KeyError, OSError) as exc:
            raise DatasetError(f"cannot extract tar archive {label}: {type(exc).__name__}: {exc}; "
                               "nothing was extracted") from None
        _move_into(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _move_into(src: Path, dest: Path) -> None:
    """Move the contents of ``src`` into ``dest``: one rename when ``dest`` is absent or empty."""
    try:
        os.rename(src, dest)  # absent, or an empty folder: replaced in one step
        src.mkdir()           # so the caller's cleanup has something to remove
        return
    except OSError:
        if not dest.is_dir():
            raise
    for entry in sorted(src.iterdir()):
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _move_into(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
