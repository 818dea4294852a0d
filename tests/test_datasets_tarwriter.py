"""The dataset artifacts' tar writer: standard archives that tarfile, GNU tar and the safe reader accept."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import tarfile

import pytest

from gnomon.core.datasets.tarwriter import TarWriter, ustar_header

MEMBERS = [
    ("data", None),
    ("data/0", None),
    ("data/0/a.png", b"x" * 10),
    ("data/0/block.png", b"y" * 512),
    ("data/0/empty.png", b""),
    ("data/0/" + "long_" * 30 + ".png", b"z" * 700),  # > 100 bytes: PAX header
    ("data/0/caf\u00e9.png", b"w" * 3),  # non-ASCII: PAX header
]


def _write(stream, mtime=1_700_000_000):
    tar = TarWriter(stream, mtime=mtime)
    for name, data in MEMBERS:
        tar.add_dir(name) if data is None else tar.add_file(name, data)
    tar.close()


@pytest.mark.parametrize("compressed", [False, True])
def test_tarfile_reads_back_every_member_exactly(compressed):
    buffer = io.BytesIO()
    if compressed:
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:
            _write(gz)
    else:
        _write(buffer)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r:*") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [name for name, _ in MEMBERS]
        for member, (_, data) in zip(members, MEMBERS, strict=True):
            assert member.mtime == 1_700_000_000
            if data is None:
                assert member.isdir() and member.mode == 0o755
            else:
                assert member.isfile() and member.mode == 0o644 and member.size == len(data)
                assert tar.extractfile(member).read() == data


def test_gnu_tar_lists_it(tmp_path):
    if shutil.which("tar") is None:
        pytest.skip("no tar binary")
    path = tmp_path / "a.tar"
    with open(path, "wb") as f:
        _write(f)
    listing = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True, check=True).stdout.split("\n")
    assert "data/0/a.png" in listing and any(n.startswith("data/0/long_long_") for n in listing)


def test_header_fast_path_only_for_what_ustar_can_hold():
    header = ustar_header("data/0/1.png", 300, 5)
    assert len(header) == 512 and header[257:263] == b"ustar\x00"
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")  # checksum verified by tarfile
    assert (info.name, info.size, info.mtime) == ("data/0/1.png", 300, 5)
    assert ustar_header("x" * 101, 1, 0) is None
    assert ustar_header("\u00e9", 1, 0) is None
    assert ustar_header("big", 8**11, 0) is None
