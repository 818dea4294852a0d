"""Safe extraction refuses crafted hostile tars, names the member, and extracts nothing on refusal."""

from __future__ import annotations

import io
import tarfile

import pytest

from gnomon.core.datasets import DatasetError, UnsafeArchiveError, safe_extract


def _tar(path, members):
    """members: list of (TarInfo kwargs, bytes or None)."""
    with tarfile.open(path, "w") as tar:
        for kwargs, data in members:
            kwargs = dict(kwargs)
            info = tarfile.TarInfo(kwargs.pop("name"))
            for key, value in kwargs.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


GOOD = ({"name": "ds/a/1.png"}, b"png bytes")


@pytest.mark.parametrize("hostile, why", [
    ({"name": "/etc/evil"}, "absolute path"),
    ({"name": "ds/../../evil"}, "'..'"),
    ({"name": "../evil"}, "'..'"),
    ({"name": "ds/link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "symlink pointing outside"),
    ({"name": "ds/link", "type": tarfile.SYMTYPE, "linkname": "../../outside"}, "symlink pointing outside"),
    ({"name": "ds/hard", "type": tarfile.LNKTYPE, "linkname": "../outside"}, "hard link pointing outside"),
    ({"name": "ds/hard", "type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}, "hard link pointing outside"),
    ({"name": "ds/dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "device file"),
    ({"name": "ds/blk", "type": tarfile.BLKTYPE, "devmajor": 8, "devminor": 0}, "device file"),
    ({"name": "ds/fifo", "type": tarfile.FIFOTYPE}, "FIFO"),
])
def test_hostile_member_is_refused_and_nothing_extracted(tmp_path, hostile, why):
    name = hostile["name"]
    path = _tar(tmp_path / "hostile.tar", [GOOD, (dict(hostile), None)])
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(path, dest)
    message = str(info.value)
    assert f"member '{name}'" in message and why in message and "hostile.tar" in message
    assert not dest.exists() or not any(dest.rglob("*"))
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside").exists()


def test_hostile_member_last_still_extracts_nothing(tmp_path):
    path = _tar(tmp_path / "late.tar", [GOOD, GOOD, ({"name": "ds/../../late"}, b"x")])
    with pytest.raises(UnsafeArchiveError, match="ds/../../late"):
        safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_write_through_symlink_is_refused(tmp_path):
    # an inside-pointing link followed by a member written through it
    path = _tar(tmp_path / "through.tar", [({"name": "ds/sub", "type": tarfile.DIRTYPE}, None),
                                           ({"name": "ds/l", "type": tarfile.SYMTYPE, "linkname": "sub"}, None),
                                           ({"name": "ds/l/x.png"}, b"x")])
    with pytest.raises(UnsafeArchiveError, match="member 'ds/l/x.png' would be written through a link"):
        safe_extract(path, tmp_path / "out")


def test_links_inside_are_allowed(tmp_path):
    path = _tar(tmp_path / "ok.tar", [GOOD, ({"name": "ds/b", "type": tarfile.SYMTYPE, "linkname": "a/1.png"}, None),
                                      ({"name": "ds/c.png", "type": tarfile.LNKTYPE, "linkname": "ds/a/1.png"}, None)])
    dest = safe_extract(path, tmp_path / "out")
    assert (dest / "ds" / "a" / "1.png").read_bytes() == b"png bytes"
    assert (dest / "ds" / "b").is_symlink() and (dest / "ds" / "b").read_bytes() == b"png bytes"
    assert (dest / "ds" / "c.png").read_bytes() == b"png bytes"


def test_gzip_and_open_tarfile_and_garbage(tmp_path):
    gz = tmp_path / "ok.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        info = tarfile.TarInfo("ds/a/1.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert (safe_extract(gz, tmp_path / "o1") / "ds/a/1.png").read_bytes() == b"abc"
    with tarfile.open(gz) as handle:
        assert (safe_extract(handle, tmp_path / "o2") / "ds/a/1.png").read_bytes() == b"abc"
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file" * 30)
    with pytest.raises(DatasetError, match="cannot read tar archive"):
        safe_extract(junk, tmp_path / "o3")


def test_reading_a_dataset_tar_applies_the_same_rules(tmp_path):
    """load_dataset_tar (used by read_dataset_artifact) refuses hostile archives before reading anything."""
    from gnomon.core.datasets.artifacts import load_dataset_tar

    path = _tar(tmp_path / "evil.tar", [GOOD, ({"name": "ds/a/2.png", "type": tarfile.SYMTYPE,
                                                 "linkname": "../../../etc/passwd"}, None)])
    with pytest.raises(UnsafeArchiveError, match="member 'ds/a/2.png' is a symlink pointing outside"):
        load_dataset_tar(path, "ds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar"]
