"""Issue 15: dataset artifacts are read within limits, and hostile link layouts get a clear refusal.

The bombs are built for real (a ~3 MB tar.gz holding a 3 GB member, 2.5 KB GNU and pax sparse
tars claiming 4 GB, a tar whose members add up past the total) and loaded in a fresh Python
process whose peak RSS growth is measured: a refusal must name the member and the limit and cost
well under 100 MB. The child runs under an address-space cap so a regression fails with a
MemoryError instead of taking the machine's memory.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from gnomon.core.datasets import DatasetError, UnsafeArchiveError, load_image_folder, safe_extract
from gnomon.core.datasets.artifacts import load_dataset_tar

GB = 2**30
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010800000000"
                    "3a7e9b550000000a49444154789c63600000000200015ce2e7a60000000049454e44ae426082")


def _dirs(tar, *names):
    for name in names:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)


def _dir_headers() -> bytes:
    out = b""
    for name in ("ds", "ds/0"):
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        out += info.tobuf(format=tarfile.GNU_FORMAT)
    return out


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def gz_bomb(path, size: int = 3 * GB, name: str = "ds/0/big.png"):
    """A tar.gz holding one ``size``-byte member of zeros, made of concatenated gzip members
    (each 1 MiB of zeros compressed once): ~1 KB of file per MiB of content, built instantly."""
    chunk = gzip.compress(bytes(2**20), compresslevel=9, mtime=0)
    with open(path, "wb") as out:
        out.write(gzip.compress(_dir_headers() + _header(name, size), mtime=0))
        for _ in range(size // 2**20):
            out.write(chunk)
        out.write(gzip.compress(bytes(1024 * 10), mtime=0))  # end-of-archive blocks
    return path


def many_members_gz(path, count: int, size: int):
    """A tar.gz of ``count`` members of ``size`` zero bytes each (every one under a per-member limit)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        _dirs(tar, "ds", "ds/0")
        for i in range(count):
            info = tarfile.TarInfo(f"ds/0/{i}.png")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def _checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def gnu_sparse_tar(path, real: int = 4 * GB, name: str = "ds/0/big.png"):
    """An old-GNU sparse member ('S'): 512 bytes of data stored, ``real`` bytes claimed (~2.5 KB file)."""
    header = bytearray(_header(name, 512))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = b"%011o\0" % (real - 512)
    header[398:410] = b"%011o\0" % 512
    header[483:495] = b"%011o\0" % real
    _checksum(header)
    path.write_bytes(_dir_headers() + bytes(header) + bytes(512) + bytes(1024))
    return path


def pax_sparse_tar(path, real: int = 4 * GB, name: str = "ds/0/big.png"):
    """A pax (GNU 1.0) sparse member: a sparse map plus 512 bytes stored, ``real`` bytes claimed."""
    sparse_map = f"1\n{real - 512}\n512\n".encode().ljust(512, b"\0")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _dirs(tar, "ds", "ds/0")
        info = tarfile.TarInfo("ds/0/GNUSparseFile.0/big.png")
        info.size = 1024
        info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
                            "GNU.sparse.realsize": str(real)}
        tar.addfile(info, io.BytesIO(sparse_map + bytes(512)))
    return path


CHILD = r"""
import json, resource, sys
from gnomon.core.datasets.artifacts import load_dataset_tar
from gnomon.core.datasets import safe_extract

vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))  # a regression: MemoryError, not OOM
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    if sys.argv[2] == "load":
        load_dataset_tar(sys.argv[1], "ds", progress=False)
    else:
        safe_extract(sys.argv[1], sys.argv[3])
    outcome = {"error": None}
except BaseException as exc:
    outcome = {"error": type(exc).__name__, "message": str(exc)}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcome.update(rss_growth_mb=(peak - base) / 1024, peak_rss_mb=peak / 1024, rss_before_mb=base / 1024)
print(json.dumps(outcome))
"""


def _measure(path, how="load", dest=None, env=None):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), how, str(dest or "")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("make, kind, expected", [
    (gz_bomb, "tar.gz", "member 'ds/0/big.png' is 3,072 MB, over the limit of 64 MB per member"),
    (gnu_sparse_tar, "tar", "member 'ds/0/big.png' is a sparse file"),
    (pax_sparse_tar, "tar", "member 'ds/0/big.png' is a sparse file"),
], ids=["gz-bomb-3GB", "gnu-sparse-4GB", "pax-sparse-4GB"])
@pytest.mark.parametrize("how", ["load", "extract"])
def test_bombs_are_refused_with_small_peak_memory(tmp_path, make, kind, expected, how):
    bomb = make(tmp_path / f"bomb.{kind}")
    assert bomb.stat().st_size < 4 * 2**20
    result = _measure(bomb, how, tmp_path / "out")
    print(f"{bomb.name} ({bomb.stat().st_size:,} bytes) {how}: {result}")
    assert result["error"] == "UnsafeArchiveError", result
    assert expected in result["message"]
    assert result["rss_growth_mb"] < 100
    assert not (tmp_path / "out").exists()


def test_members_adding_up_past_the_total_are_refused_before_the_rest_is_read(tmp_path):
    bomb = many_members_gz(tmp_path / "many.tar.gz", count=12, size=20 * 2**20)
    result = _measure(bomb, env={"GNOMON_TAR_MAX_TOTAL_MB": "100"})
    assert result["error"] == "UnsafeArchiveError", result
    assert "member 'ds/0/5.png' brings the archive to 120 MB, over the limit of 100 MB in all" in result["message"]
    assert "GNOMON_TAR_MAX_TOTAL_MB" in result["message"]
    assert result["rss_growth_mb"] < 100
    # the same archive loads (and is refused only for not being images) once the limit allows it
    from gnomon.core.datasets.safetar import TarLimits

    with pytest.raises(DatasetError, match="cannot read image"):
        load_dataset_tar(bomb, "ds", progress=False, limits=TarLimits(max_total=300 * 2**20))


def test_member_count_and_extended_header_limits(tmp_path):
    from gnomon.core.datasets.safetar import TarLimits

    many = tmp_path / "many.tar"
    with tarfile.open(many, "w") as tar:
        _dirs(tar, "ds", "ds/0")
        for i in range(20):
            info = tarfile.TarInfo(f"ds/0/{i}.png")
            tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UnsafeArchiveError, match=r"member 'ds/0/8.png' is past the limit of 10 members"):
        load_dataset_tar(many, "ds", limits=TarLimits(max_members=10))
    huge_pax = tmp_path / "pax.tar"
    with tarfile.open(huge_pax, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("ds/0/a.png")
        info.pax_headers = {"comment": "x" * (3 * 2**20)}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UnsafeArchiveError, match=r"'pax.tar': an extended header of 3 MB .* over the 1 MB limit"):
        load_dataset_tar(huge_pax, "ds")


def test_default_limits_fit_a_real_dataset_artifact(tmp_path, mnist_sample_dirs):
    """What gnomon writes (PNG class folders) loads under the defaults; the defaults are documented."""
    from gnomon.core.datasets.artifacts import write_dataset_tar

    ds = load_image_folder(mnist_sample_dirs["training"], progress=False)
    tar = tmp_path / "training.tar.gz"
    write_dataset_tar(ds, tar, "training", progress=False)
    back = load_dataset_tar(tar, "training", progress=False)
    assert back.x.shape == ds.x.shape
    from gnomon.core.datasets.safetar import TarLimits

    limits = TarLimits.from_settings()
    assert (limits.max_member, limits.max_total, limits.max_members) == (64 * 2**20, 2048 * 2**20, 1_000_000)


# -- links: chains, loops and dangling links get a clear refusal, not a KeyError ---------------
def _links_tar(path, extra, target_first=True):
    with tarfile.open(path, "w") as tar:
        _dirs(tar, "ds", "ds/0")
        members = [("ds/0/c.png", {})] + extra if target_first else extra + [("ds/0/c.png", {})]
        for name, kw in members:
            info = tarfile.TarInfo(name)
            for k, v in kw.items():
                setattr(info, k, v)
            if not kw:
                info.size = len(PNG)
                tar.addfile(info, io.BytesIO(PNG))
            else:
                tar.addfile(info)
    return path


SYM, HARD = tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.mark.parametrize("extra, target_first, why", [
    ([("ds/0/b.png", {"type": SYM, "linkname": "c.png"}), ("ds/0/a.png", {"type": SYM, "linkname": "b.png"})],
     True, "member 'ds/0/a.png' is a symlink to or through another link ('b.png'); chains of links are refused"),
    ([("ds/0/a.png", {"type": SYM, "linkname": "b.png"}), ("ds/0/b.png", {"type": SYM, "linkname": "c.png"})],
     False, "member 'ds/0/a.png' is a symlink to 'b.png', which is not a file or folder earlier in the archive"),
    ([("ds/0/a.png", {"type": SYM, "linkname": "b.png"}), ("ds/0/b.png", {"type": SYM, "linkname": "a.png"})],
     True, "member 'ds/0/a.png' is a symlink to 'b.png', which is not a file or folder earlier"),
    ([("ds/0/a.png", {"type": SYM, "linkname": "nope.png"})], True, "symlink to 'nope.png', which is not a file"),
    ([("ds/0/d1", {"type": SYM, "linkname": ".."}), ("ds/0/a.png", {"type": SYM, "linkname": "d1/0/c.png"})],
     True, "member 'ds/0/a.png' is a symlink to or through another link ('d1/0/c.png')"),
    ([("ds/0/s.png", {"type": SYM, "linkname": "c.png"}), ("ds/0/h.png", {"type": HARD, "linkname": "ds/0/s.png"})],
     True, "member 'ds/0/h.png' is a hard link to or through another link ('ds/0/s.png')"),
    ([("ds/0/h.png", {"type": HARD, "linkname": "ds/0/c.png"})], False,
     "member 'ds/0/h.png' is a hard link to 'ds/0/c.png', which is not a file or folder earlier"),
], ids=["chain", "chain-forward", "loop", "dangling", "through-dir-link", "hard-to-sym", "hard-forward"])
@pytest.mark.parametrize("how", ["load", "extract"])
def test_link_chains_are_refused_by_the_member_check(tmp_path, extra, target_first, why, how):
    path = _links_tar(tmp_path / "links.tar", extra, target_first)
    with pytest.raises(UnsafeArchiveError) as info:
        if how == "load":
            load_dataset_tar(path, "ds", progress=False)
        else:
            safe_extract(path, tmp_path / "out")
    assert why in str(info.value)
    assert not (tmp_path / "out").exists()


def test_links_to_earlier_files_and_folders_still_load(tmp_path):
    path = _links_tar(tmp_path / "ok.tar", [("ds/0/a.png", {"type": SYM, "linkname": "c.png"}),
                                            ("ds/0/h.png", {"type": HARD, "linkname": "ds/0/c.png"}),
                                            ("ds/1", {"type": SYM, "linkname": "0"})])
    ds = load_dataset_tar(path, "ds", progress=False)
    assert ds.files == ["0/a.png", "0/c.png", "0/h.png"]
    out = safe_extract(path, tmp_path / "out")
    assert (out / "ds/0/a.png").read_bytes() == PNG and (out / "ds/1").is_symlink()


# -- safe_extract leaves nothing behind when it fails -------------------------------------------
def test_a_failure_during_extraction_leaves_the_destination_untouched(tmp_path):
    """A name the file system refuses (component > 255 bytes) fails mid-way: earlier members were
    written before; now nothing is, and the error is a DatasetError, not a raw OSError."""
    path = tmp_path / "late.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("ds/0/early.png", "ds/0/" + "x" * 300 + ".png"):
            info = tarfile.TarInfo(name)
            info.size = len(PNG)
            tar.addfile(info, io.BytesIO(PNG))
    for dest in (tmp_path / "absent", tmp_path / "empty", tmp_path / "full"):
        if dest.name != "absent":
            dest.mkdir()
        if dest.name == "full":
            (dest / "keep.txt").write_text("mine")
        with pytest.raises(DatasetError, match="nothing was extracted"):
            safe_extract(path, dest)
        expected = {"absent": None, "empty": [], "full": ["keep.txt"]}[dest.name]
        assert (sorted(p.name for p in dest.iterdir()) if dest.exists() else None) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full", "late.tar"]  # no staging left


def test_extracting_into_a_folder_with_content_merges(tmp_path):
    path = _links_tar(tmp_path / "ok.tar", [])
    dest = tmp_path / "out"
    (dest / "ds" / "0").mkdir(parents=True)
    (dest / "ds" / "0" / "c.png").write_bytes(b"old")
    (dest / "mine.txt").write_text("x")
    safe_extract(path, dest)
    assert (dest / "ds/0/c.png").read_bytes() == PNG and (dest / "mine.txt").read_text() == "x"


# -- folder loader: class_names cannot point outside the folder --------------------------------
@pytest.mark.parametrize("bad", ["../secret", "ABS", "a/b", "..", ""])
def test_manifest_class_names_cannot_leave_the_folder(tmp_path, bad):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "stolen.png").write_bytes(PNG)
    root = tmp_path / "ds"
    (root / "0").mkdir(parents=True)
    (root / "0" / "a.png").write_bytes(PNG)
    name = str(secret) if bad == "ABS" else bad
    (root / "gnomon-dataset.json").write_text(json.dumps({"class_names": ["0", name]}))
    with pytest.raises(DatasetError, match="is not a plain folder name") as info:
        load_image_folder(root, progress=False, cache=False)
    assert "gnomon-dataset.json" in str(info.value) and repr(name) in str(info.value)
    # the same manifest inside a dataset tar is refused too
    tar_path = tmp_path / "ds.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root, arcname="ds")
    with pytest.raises(DatasetError, match="is not a plain folder name"):
        load_dataset_tar(tar_path, "ds", progress=False)


def test_tampered_seal_cannot_name_files_outside(tmp_path, mnist_sample_dirs):
    import shutil

    from gnomon.core.datasets import folder

    root = tmp_path / "ds"
    shutil.copytree(mnist_sample_dirs["testing"], root)
    folder.seal_folder(root, content="test")
    assert folder.scan_folder(root, stat_files=False, use_seal=True).sealed
    seal = root / folder.SEAL
    data = json.loads(seal.read_text())
    data["files"][0] = "../../outside.png"
    seal.write_text(json.dumps(data))
    scan = folder.scan_folder(root, stat_files=False, use_seal=True)
    assert not scan.sealed and not any(".." in f for f in scan.files)  # the seal ignored, the folder scanned
    data["files"][0], data["class_names"][0] = scan.files[0], "../0"
    seal.write_text(json.dumps(data))
    assert not folder.scan_folder(root, stat_files=False, use_seal=True).sealed
