"""MNIST preparation: layout and pixels, sha256 checks, idempotence, atomicity, URL sources, offline errors."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import re
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gnomon.core.datasets import ChecksumError, DatasetError, MnistSourceError, mnist_dir, prepare_mnist
from gnomon.core.datasets import mnist as mnist_mod
from gnomon.core.datasets.idx import BASENAMES, FULL_MNIST_SHA256, parse_sha256sums

from .conftest import FULL_MNIST, SAMPLE_IDX
from .servers import ctrl_c_enabled


def _sums():
    return parse_sha256sums((SAMPLE_IDX / "SHA256SUMS").read_text())


def test_prepares_layout_with_exact_pixels(tmp_path, mnist_sample_arrays):
    result = prepare_mnist(tmp_path / "mnist", str(SAMPLE_IDX), progress=False)
    assert result.created and result.counts == {"training": 1000, "testing": 300}
    assert result.hashes == _sums()
    for split in ("training", "testing"):
        x, y = mnist_sample_arrays[split]
        folder = tmp_path / "mnist" / split
        assert sorted(p.name for p in folder.iterdir()) == [".gnomon-seal.json"] + [str(i) for i in range(10)]
        files = sorted(folder.rglob("*.png"))
        assert len(files) == len(y)
        for n in (0, 1, len(y) - 1):
            path = folder / str(int(y[n])) / f"{n}.png"
            with Image.open(path) as im:
                assert im.mode == "L" and im.size == (28, 28)
                np.testing.assert_array_equal(np.asarray(im), x[n])
    marker = json.loads((tmp_path / "mnist" / ".gnomon-mnist.json").read_text())
    assert marker["complete"] and marker["hashes"] == _sums()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no build folder left


def test_second_call_is_a_no_op(tmp_path):
    dest = tmp_path / "mnist"
    prepare_mnist(dest, str(SAMPLE_IDX), progress=False)
    marker = dest / ".gnomon-mnist.json"
    png = next((dest / "testing" / "0").iterdir())
    before = (marker.stat().st_mtime_ns, png.stat().st_mtime_ns)
    again = prepare_mnist(dest, str(SAMPLE_IDX), progress=False)
    assert not again.created and again.counts == {"training": 1000, "testing": 300}
    assert (marker.stat().st_mtime_ns, png.stat().st_mtime_ns) == before
    # no source at all and already prepared: also a no-op (no download attempted)
    os.environ.pop("GNOMON_MNIST_SOURCE", None)
    assert not prepare_mnist(dest, None, progress=False).created


def test_uncompressed_copy_is_accepted_and_recognised(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for base in BASENAMES:
        (raw / base).write_bytes(gzip.decompress((SAMPLE_IDX / f"{base}.gz").read_bytes()))
    shutil.copy(SAMPLE_IDX / "SHA256SUMS", raw / "SHA256SUMS")
    dest = tmp_path / "mnist"
    assert prepare_mnist(dest, str(raw), progress=False).created
    # the gz sample holds the same bytes: recognised by hash, nothing rewritten
    assert not prepare_mnist(dest, str(SAMPLE_IDX), progress=False).created


def _copy_sample(tmp_path, sums: str | None) -> Path:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    for base in BASENAMES:
        shutil.copy(SAMPLE_IDX / f"{base}.gz", src)
    if sums is not None:
        (src / "SHA256SUMS").write_text(sums)
    return src


def test_checksum_failures_are_clear_and_write_nothing(tmp_path):
    dest = tmp_path / "mnist"
    no_sums = _copy_sample(tmp_path / "a", None)
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte .* not the full-MNIST .* no SHA256SUMS"):
        prepare_mnist(dest, str(no_sums), progress=False)
    wrong = (SAMPLE_IDX / "SHA256SUMS").read_text().replace("386bb018", "00000000")
    bad = _copy_sample(tmp_path / "b", wrong)
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte .* is corrupt: sha256 386bb018.*SHA256SUMS says 00000000"):
        prepare_mnist(dest, str(bad), progress=False)
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    partial = _copy_sample(tmp_path / "c", None)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="lacks t10k-labels-idx1-ubyte"):
        prepare_mnist(dest, str(partial), progress=False)


def test_full_mnist_hashes_match_the_shared_readme():
    if not (FULL_MNIST / "README.md").is_file():  # a user's clone has no ../shared
        pytest.skip(f"no full-MNIST README at {FULL_MNIST}")
    readme = (FULL_MNIST / "README.md").read_text()
    listed = dict(re.findall(r"\|\s*([a-z0-9-]+-ubyte)\s*\|\s*([0-9a-f]{64})\s*\|", readme))
    assert listed == FULL_MNIST_SHA256


def test_interrupted_run_leaves_no_half_written_dest(tmp_path, monkeypatch):
    dest = tmp_path / "mnist"
    real = mnist_mod.write_split

    def write_then_die(folder, images, labels, progress_factory, description):
        real(folder, images[:50], labels[:50], progress_factory, description)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(mnist_mod, "write_split", write_then_die)
        with pytest.raises(KeyboardInterrupt):
            prepare_mnist(dest, str(SAMPLE_IDX), progress=False)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []

    # an interrupted rebuild keeps the previous complete folder intact
    prepare_mnist(dest, str(SAMPLE_IDX), progress=False)
    n_before = len(list(dest.rglob("*.png")))
    monkeypatch.setattr(mnist_mod, "write_split", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_mnist(dest, str(SAMPLE_IDX), progress=False, force=True)
    assert len(list(dest.rglob("*.png"))) == n_before == 1300
    assert mnist_mod.read_marker(dest) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]


def test_stale_build_folder_of_a_dead_process_is_removed(tmp_path):
    stale = tmp_path / ".mnist.partial-999999999-abcd"
    (stale / "training").mkdir(parents=True)
    prepare_mnist(tmp_path / "mnist", str(SAMPLE_IDX), progress=False)
    assert not stale.exists()


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="refusing to write MNIST into .*not a folder prepared by"):
        prepare_mnist(dest, str(SAMPLE_IDX), progress=False)
    assert (dest / "precious.txt").read_text() == "keep me"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror():
    """A real HTTP server on 127.0.0.1 serving the shipped sample (never the internet)."""
    handler = functools.partial(_Quiet, directory=str(SAMPLE_IDX))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_from_url_prefix(tmp_path, http_mirror, mnist_sample_arrays):
    dest = tmp_path / "mnist"
    result = prepare_mnist(dest, http_mirror, progress=False)
    assert result.created and result.hashes == _sums() and result.source == http_mirror
    with Image.open(dest / "testing" / str(int(mnist_sample_arrays["testing"][1][5])) / "5.png") as im:
        np.testing.assert_array_equal(np.asarray(im), mnist_sample_arrays["testing"][0][5])
    assert not prepare_mnist(dest, http_mirror, progress=False).created


def test_public_mirrors_are_used_without_source(tmp_path, http_mirror, monkeypatch):
    monkeypatch.delenv("GNOMON_MNIST_SOURCE")
    monkeypatch.setenv("GNOMON_MNIST_MIRRORS", f"http://127.0.0.1:{_closed_port()}/,{http_mirror}")
    assert prepare_mnist(tmp_path / "mnist", progress=False).source == http_mirror


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the with-block ends


def test_closed_port_url_fails_with_hint(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/mnist/"
    with pytest.raises(MnistSourceError) as info:
        prepare_mnist(tmp_path / "mnist", url, progress=False)
    message = str(info.value)
    assert f"could not download {url}train-images-idx3-ubyte.gz" in message
    assert "refused" in message.lower()
    assert "--source" in message and "GNOMON_MNIST_SOURCE" in message and "\n" not in message
    assert not (tmp_path / "mnist").exists() and list(tmp_path.iterdir()) == []


def test_offline_without_source_says_how_to_point_at_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("GNOMON_MNIST_SOURCE")
    monkeypatch.setenv("GNOMON_MNIST_MIRRORS", f"http://127.0.0.1:{_closed_port()}/")
    with pytest.raises(MnistSourceError, match=r"offline\? point gnomon at a local copy .*--source DIR.*GNOMON_MNIST_SOURCE"):
        prepare_mnist(tmp_path / "mnist", progress=False)


def test_mnist_dir_prepares_from_env_source_once(gnomon_home):
    path = mnist_dir("training")
    assert path == gnomon_home / "data" / "mnist" / "training"
    assert len(list(path.rglob("*.png"))) == 1000
    marker = path.parent / ".gnomon-mnist.json"
    stamp = marker.stat().st_mtime_ns
    assert mnist_dir("testing").name == "testing" and marker.stat().st_mtime_ns == stamp
    with pytest.raises(DatasetError, match="split must be one of training, testing"):
        mnist_dir("validation")


def test_bad_idx_content_is_reported(tmp_path):
    src = _copy_sample(tmp_path, None)
    data = gzip.decompress((src / "train-labels-idx1-ubyte.gz").read_bytes())
    truncated = data[:-10]
    (src / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(truncated))
    sums = _sums()
    import hashlib

    sums["train-labels-idx1-ubyte"] = hashlib.sha256(truncated).hexdigest()
    (src / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in sums.items()))
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte is truncated"):
        prepare_mnist(tmp_path / "mnist", str(src), progress=False)


@pytest.mark.skipif(not FULL_MNIST.is_dir(), reason="full MNIST not available")
def test_full_mnist_source_verifies(tmp_path):
    from gnomon.core.datasets.mnist import load_source

    raw, hashes, where = load_source(str(FULL_MNIST), tmp_path, lambda *a, **k: __import__("contextlib").nullcontext(lambda n=1: None))
    assert hashes == FULL_MNIST_SHA256 and len(raw["train-labels-idx1-ubyte"]) == 8 + 60000


def _wait_for_pngs(parent: Path, minimum: int, timeout: float = 60.0) -> Path:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        for build in parent.glob(".mnist.partial-*"):
            if len(list((build / "training").rglob("*.png"))) >= minimum if (build / "training").is_dir() else False:
                return build
        time.sleep(0.1)
    pytest.fail("the build never started writing PNGs")


@pytest.mark.skipif(not FULL_MNIST.is_dir(), reason="full MNIST not available")
@pytest.mark.parametrize("signame", ["SIGINT", "SIGKILL"])
def test_real_process_interrupted_mid_write(tmp_path, signame):
    """A real `gnomon data mnist` stopped while writing: DEST never appears half-written."""
    import signal
    import subprocess
    import sys

    dest = tmp_path / "mnist"
    env = dict(os.environ, GNOMON_WORKERS="1")
    proc = subprocess.Popen([sys.executable, "-c", "from gnomon.cli.main import main; main()", "data", "mnist",
                             "--source", str(FULL_MNIST), "--dest", str(dest)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=ctrl_c_enabled)
    try:
        build = _wait_for_pngs(tmp_path, 20)
        proc.send_signal(getattr(signal, signame))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert not dest.exists()
    if signame == "SIGINT":  # cleaned up on the way out
        assert not build.exists()
    # the next run (here from the sample) removes any leftover of the dead process and succeeds
    assert prepare_mnist(dest, str(SAMPLE_IDX), progress=False).created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]


def test_concurrent_preparations_leave_one_complete_folder(tmp_path):
    """Several processes preparing the same DEST at once: all succeed, DEST is complete, no leftovers."""
    import subprocess
    import sys

    dest = tmp_path / "mnist"
    code = ("import sys; from gnomon.core.datasets import prepare_mnist; "
            "r = prepare_mnist(sys.argv[1], sys.argv[2], progress=False); print(r.created)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(dest), str(SAMPLE_IDX)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert mnist_mod.read_marker(dest) is not None
    assert len(list(dest.rglob("*.png"))) == 1300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]


def test_url_prefix_serving_uncompressed_files_and_file_url(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for base in BASENAMES:
        (raw / base).write_bytes(gzip.decompress((SAMPLE_IDX / f"{base}.gz").read_bytes()))
    shutil.copy(SAMPLE_IDX / "SHA256SUMS", raw)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(raw)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"  # no trailing slash: still a prefix
        result = prepare_mnist(tmp_path / "a", url, progress=False)  # .gz gives 404, the plain file is used
        assert result.created and result.hashes == _sums()
    finally:
        server.shutdown()
        server.server_close()
    assert prepare_mnist(tmp_path / "b", f"file://{SAMPLE_IDX}", progress=False).hashes == _sums()


def test_silent_server_times_out_with_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("GNOMON_DOWNLOAD_TIMEOUT", "0.5")
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        with pytest.raises(MnistSourceError, match="could not download .*timed out.*GNOMON_MNIST_SOURCE"):
            prepare_mnist(tmp_path / "m", url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_same_data_from_another_folder_updates_marker_only(tmp_path):
    dest = tmp_path / "mnist"
    prepare_mnist(dest, str(SAMPLE_IDX), progress=False)
    other = _copy_sample(tmp_path / "copy", (SAMPLE_IDX / "SHA256SUMS").read_text())
    png = next((dest / "training" / "1").iterdir())
    stamp = png.stat().st_mtime_ns
    result = prepare_mnist(dest, str(other), progress=False)
    assert not result.created and result.source == str(other)
    assert png.stat().st_mtime_ns == stamp
    assert json.loads((dest / ".gnomon-mnist.json").read_text())["source"] == str(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "mnist"]  # no build folder left
    # and then it is a cheap no-op for that source too
    assert not prepare_mnist(dest, str(other), progress=False).created


def test_different_data_replaces_a_prepared_folder(tmp_path):
    dest = tmp_path / "mnist"
    prepare_mnist(dest, str(SAMPLE_IDX), progress=False)
    # a smaller 'MNIST': the first 100/30 images, vouched for by its own SHA256SUMS
    import hashlib

    small = tmp_path / "small"
    small.mkdir()
    sums = []
    for base in BASENAMES:
        data = gzip.decompress((SAMPLE_IDX / f"{base}.gz").read_bytes())
        n = 100 if base.startswith("train") else 30
        if "images" in base:
            data = data[:4] + n.to_bytes(4, "big") + data[8:16] + data[16:16 + n * 784]
        else:
            data = data[:4] + n.to_bytes(4, "big") + data[8:8 + n]
        (small / base).write_bytes(data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {base}\n")
    (small / "SHA256SUMS").write_text("".join(sums))
    result = prepare_mnist(dest, str(small), progress=False)
    assert result.created and result.counts == {"training": 100, "testing": 30}
    assert len(list(dest.rglob("*.png"))) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist", "small"]
