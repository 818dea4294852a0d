"""Streaming tar writer for dataset artifacts: many small members, fast.

Kept because the library is slower on the real workload: ``benchmarks/bench_handwritten.py``
(the 10,000 MNIST test PNGs into one tar, same run) measured :mod:`tarfile` ``addfile`` 3.3x
slower (1.94 s vs 0.59 s); the rule is to keep a hand-written replacement only at >= 1.5x.

``tarfile.TarFile.addfile`` costs ~25 us per member in Python (a TarInfo copy, PAX header
assembly), as much as encoding a 28x28 PNG. A dataset artifact holds tens of thousands of
members whose names are short ASCII paths, so their POSIX ustar headers are built here
directly (~5 us); any other name (long, non-ASCII) falls back to ``TarInfo.tobuf`` in PAX
format. The output is a standard archive: tests read it back with :mod:`tarfile` and with
gnomon's safe reader.
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO

BLOCK = 512
_USTAR_MAGIC = b"ustar\x0000"


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def ustar_header(name: str, size: int, mtime: int, *, directory: bool = False) -> bytes | None:
    """The 512-byte ustar header for ``name``, or None if it needs a PAX header (long or non-ASCII)."""
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        return None
    if len(raw) > 100 or size >= 8**11 or not 0 <= mtime < 8**11:
        return None
    header = bytearray(BLOCK)
    header[0:len(raw)] = raw
    header[100:108] = _octal(0o755 if directory else 0o644, 8)
    header[108:116] = _octal(0, 8)  # uid
    header[116:124] = _octal(0, 8)  # gid
    header[124:136] = _octal(size, 12)
    header[136:148] = _octal(mtime, 12)
    header[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    header[156:157] = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    header[257:265] = _USTAR_MAGIC
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


class TarWriter:
    """Write members to an open binary stream as a tar archive; :meth:`close` writes the end marker."""

    def __init__(self, stream: BinaryIO, mtime: float = 0.0):
        self.stream = stream
        self.mtime = int(mtime)

    def _header(self, name: str, size: int, directory: bool) -> bytes:
        header = ustar_header(name, size, self.mtime, directory=directory)
        if header is None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = (0 if directory else size), self.mtime
            info.type, info.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        return header

    def add_dir(self, name: str) -> None:
        self.stream.write(self._header(name, 0, True))

    def add_file(self, name: str, data: bytes) -> None:
        self.stream.write(self._header(name, len(data), False))
        self.stream.write(data)
        pad = -len(data) % BLOCK
        if pad:
            self.stream.write(b"\x00" * pad)

    def close(self) -> None:
        self.stream.write(b"\x00" * (2 * BLOCK))
