"""Loading class folders: exact pixels against an independent reference, colour/size handling, the cache, splits."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from gnomon.core.datasets import (
    DatasetError,
    ImageDataset,
    cache_dir,
    load_image_folder,
    quantize,
    train_validation_split,
)
from gnomon.core.datasets.dataset import to_float, to_uint8


def _reference_order(arrays, split):
    """The loader's documented order: by class, then by file index (the IDX index)."""
    x, y = arrays[split]
    order = np.lexsort((np.arange(len(y)), y))
    return x[order], y[order], order


@pytest.mark.parametrize("split", ["training", "testing"])
def test_loads_mnist_sample_exactly(split, mnist_sample_dirs, mnist_sample_arrays, gnomon_home):
    ds = load_image_folder(mnist_sample_dirs[split], progress=False)
    ref_x, ref_y, order = _reference_order(mnist_sample_arrays, split)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.x.shape == (len(ref_y), 28, 28, 1)
    assert ds.class_names == [str(i) for i in range(10)]
    np.testing.assert_array_equal(ds.y, ref_y)
    np.testing.assert_array_equal(to_uint8(ds.x)[..., 0], ref_x)
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    assert ds.files[:2] == [f"0/{order[0]}.png", f"0/{order[1]}.png"]


def test_parallel_decode_equals_serial(mnist_sample_dirs, gnomon_home):
    serial = load_image_folder(mnist_sample_dirs["training"], cache=False, workers=1, progress=False)
    parallel = load_image_folder(mnist_sample_dirs["training"], cache=False, workers=2, progress=False)
    np.testing.assert_array_equal(serial.x, parallel.x)
    np.testing.assert_array_equal(serial.y, parallel.y)
    assert serial.files == parallel.files


def _make_folder(root, spec):
    """spec: {class: [(mode, (w, h), color), ...]} -> image files."""
    for cls, images in spec.items():
        (root / cls).mkdir(parents=True)
        for i, (mode, size, color) in enumerate(images):
            Image.new(mode, size, color).save(root / cls / f"{i}.png")
    return root


def test_rgb_images_any_size_and_conversion(tmp_path, gnomon_home):
    root = _make_folder(tmp_path / "rgb", {
        "cat": [("RGB", (40, 30), (255, 0, 0)), ("RGB", (40, 30), (0, 255, 0))],
        "dog": [("RGB", (40, 30), (0, 0, 255))],
    })
    ds = load_image_folder(root, progress=False)
    assert ds.x.shape == (3, 30, 40, 3) and ds.class_names == ["cat", "dog"]
    np.testing.assert_allclose(ds.x[0, 0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(ds.y, [0, 0, 1])

    small = load_image_folder(root, image_size=(8, 16), progress=False)
    assert small.x.shape == (3, 8, 16, 3)
    np.testing.assert_allclose(small.x[2, 4, 4], [0.0, 0.0, 1.0])

    gray = load_image_folder(root, color_mode="grayscale", image_size=12, progress=False)
    assert gray.x.shape == (3, 12, 12, 1)
    # PIL's ITU-R 601-2 luma: L = R*299/1000 + G*587/1000 + B*114/1000
    np.testing.assert_allclose(gray.x[:, 0, 0, 0] * 255, [76, 150, 29], atol=1)


def test_grayscale_to_rgb_and_mixed_modes(tmp_path, gnomon_home):
    root = _make_folder(tmp_path / "mixed", {"a": [("L", (10, 10), 200)], "b": [("RGB", (10, 10), (10, 20, 30))]})
    ds = load_image_folder(root, progress=False)  # mixed: promoted to RGB
    assert ds.x.shape == (2, 10, 10, 3)
    np.testing.assert_array_equal(to_uint8(ds.x[0, 0, 0]), [200, 200, 200])
    rgb = load_image_folder(root, color_mode="rgb", progress=False)
    np.testing.assert_array_equal(rgb.x, ds.x)


def test_different_sizes_need_image_size(tmp_path, gnomon_home):
    root = _make_folder(tmp_path / "sizes", {"a": [("L", (10, 10), 1)], "b": [("L", (12, 10), 1)]})
    with pytest.raises(DatasetError, match="differ in size.*image_size"):
        load_image_folder(root, progress=False)
    assert load_image_folder(root, image_size=(10, 10), progress=False).x.shape == (2, 10, 10, 1)


def test_bad_folders_have_clear_errors(tmp_path, gnomon_home):
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_image_folder(tmp_path / "flat")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image 'a/1.png'"):
        load_image_folder(tmp_path / "broken", progress=False)
    with pytest.raises(DatasetError, match="color_mode"):
        load_image_folder(tmp_path / "broken", color_mode="cmyk")


def test_cache_is_used_and_invalidated(tmp_path, mnist_sample_dirs, gnomon_home, monkeypatch):
    assert cache_dir().is_relative_to(gnomon_home)
    root = tmp_path / "copy"
    shutil.copytree(mnist_sample_dirs["testing"], root)
    first = load_image_folder(root, progress=False)
    cached = list(cache_dir().glob("*.npy"))
    assert len(cached) == 1 and cached[0].stat().st_size >= first.x.size  # one uint8 array file

    from gnomon.core.datasets import folder

    def boom(*a, **k):
        raise AssertionError("decoded although the cache is valid")

    target = root / first.files[0]
    with monkeypatch.context() as m:
        m.setattr(folder, "decode_files", boom)
        second = load_image_folder(root, progress=False)
        np.testing.assert_array_equal(first.x, second.x)
        np.testing.assert_array_equal(first.y, second.y)
        assert first.files == second.files

        # a changed file (new content, new mtime) is a new key: decoded again
        Image.fromarray(np.full((28, 28), 255, np.uint8)).save(target)
        os.utime(target, ns=(1, 1))
        with pytest.raises(AssertionError, match="decoded although"):
            load_image_folder(root, progress=False)
    changed = load_image_folder(root, progress=False)
    assert changed.x[0].min() == 1.0
    # different options: different entry
    load_image_folder(root, image_size=14, progress=False)
    assert len(list(cache_dir().glob("*.npy"))) == 3
    # no temp files left behind
    assert not [p for p in cache_dir().iterdir() if p.suffix != ".npy"]


def test_corrupt_cache_entry_is_ignored(tmp_path, mnist_sample_dirs, gnomon_home):
    first = load_image_folder(mnist_sample_dirs["testing"], progress=False)
    (entry,) = cache_dir().glob("*.npy")
    entry.write_bytes(b"garbage")
    again = load_image_folder(mnist_sample_dirs["testing"], progress=False)
    np.testing.assert_array_equal(first.x, again.x)


def test_quantize_matches_uint8_round_trip():
    rng = np.random.default_rng(0)
    x = rng.random((5, 4, 4, 1), dtype=np.float32)
    q = quantize(x)
    assert np.abs(q - x).max() <= 0.5 / 255 + 1e-7
    np.testing.assert_array_equal(quantize(q), q)  # idempotent
    np.testing.assert_array_equal(to_float(to_uint8(q)), q)
    np.testing.assert_array_equal(to_uint8(np.array([-1.0, 2.0])), [0, 255])


def test_split_is_seeded_stratified_and_disjoint(mnist_sample_dirs, gnomon_home):
    ds = load_image_folder(mnist_sample_dirs["training"], progress=False)
    train, val = train_validation_split(ds, 0.2, seed=7)
    again_train, again_val = ds.split(0.2, seed=7)
    other_train, _ = ds.split(0.2, seed=8)
    assert len(train) + len(val) == len(ds)
    assert abs(len(val) - 200) <= 10
    assert train.files == again_train.files and val.files == again_val.files
    assert train.files != other_train.files
    assert not set(train.files) & set(val.files)
    counts = np.bincount(val.y, minlength=10) / np.bincount(ds.y, minlength=10)
    assert np.all(np.abs(counts - 0.2) < 0.05)
    with pytest.raises(ValueError, match="validation_fraction"):
        ds.split(1.0)


def test_poisoned_mask_follows_subsets():
    x = np.zeros((6, 2, 2, 1), np.float32)
    ds = ImageDataset(x, [0, 1, 0, 1, 0, 1], ["a", "b"], {"poisoned_indices": [1, 4], "target_class": 1},
                      [f"{'ab'[i % 2]}/{i}.png" for i in range(6)])
    np.testing.assert_array_equal(ds.poisoned_mask(), [0, 1, 0, 0, 1, 0])
    sub = ds.subset([4, 0, 1])
    np.testing.assert_array_equal(sub.poisoned_mask(), [1, 0, 1])
    assert sub.metadata["poisoned_files"] == ["a/4.png", "b/1.png"]
    by_files = ImageDataset(x, ds.y, ds.class_names, {"poisoned_files": ["b/3.png"]}, ds.files)
    np.testing.assert_array_equal(by_files.poisoned_mask(), [0, 0, 0, 1, 0, 0])
    with pytest.raises(ValueError, match="labels must lie"):
        ImageDataset(x, [0, 1, 2, 0, 0, 0], ["a", "b"])


def test_import_is_light():
    import subprocess

    code = ("import sys, gnomon.core.datasets as d; d.ImageDataset; d.load_image_folder; d.resolve_dataset; "
            "d.write_dataset_artifact; d.mnist_dir; "
            "bad = [m for m in ('tensorflow', 'mlflow', 'keras', 'PIL', 'art') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cache_is_capped_least_recently_used_first(tmp_path, mnist_sample_dirs, gnomon_home, monkeypatch):
    monkeypatch.setenv("GNOMON_CACHE_MAX_MB", "1.6")
    load_image_folder(mnist_sample_dirs["training"], progress=False)  # 784 kB
    load_image_folder(mnist_sample_dirs["testing"], progress=False)  # 235 kB
    os.utime(next(iter(sorted(cache_dir().glob("*.npy"), key=lambda p: p.stat().st_size))), (1, 1))  # testing: oldest
    load_image_folder(mnist_sample_dirs["training"], image_size=27, progress=False)  # 729 kB: 1.75 MB > cap
    sizes = sorted(p.stat().st_size for p in cache_dir().glob("*.npy"))
    assert len(sizes) == 2 and sizes[0] > 700_000  # the least recently used (testing) went, nothing more


def test_forkserver_workers_after_a_threaded_runtime_is_loaded(mnist_sample_dirs, gnomon_home, monkeypatch):
    """Once TensorFlow (here: any listed module) is imported, workers come from forkserver, not fork."""
    from gnomon.core.datasets import _util

    monkeypatch.setattr(_util, "_THREADED_RUNTIMES", ("gnomon",))
    pool = _util.process_pool(2)
    try:
        assert pool._mp_context.get_start_method() == "forkserver"
    finally:
        pool.shutdown()
    calls = []
    real = _util.process_pool
    monkeypatch.setattr(_util, "process_pool", lambda w: calls.append(w) or real(w))
    serial = load_image_folder(mnist_sample_dirs["training"], cache=False, workers=1, progress=False)
    parallel = load_image_folder(mnist_sample_dirs["training"], cache=False, workers=2, progress=False)
    np.testing.assert_array_equal(serial.x, parallel.x)
    assert calls == [2]  # 1,000 images in two chunks: the pool was really used


def _die():
    os._exit(3)


def test_broken_worker_pool_falls_back_to_this_process(mnist_sample_dirs, gnomon_home, monkeypatch):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from gnomon.core.datasets import _util

    monkeypatch.setattr(_util, "process_pool", lambda w: ProcessPoolExecutor(
        w, mp_context=multiprocessing.get_context("fork"), initializer=_die))
    reference = load_image_folder(mnist_sample_dirs["training"], cache=False, workers=1, progress=False)
    with pytest.warns(RuntimeWarning, match="worker processes could not start"):
        fallback = load_image_folder(mnist_sample_dirs["training"], cache=False, workers=2, progress=False)
    np.testing.assert_array_equal(reference.x, fallback.x)


def test_dirs_validation_mode(tmp_path, mnist_sample_dirs, gnomon_home, monkeypatch):
    """GNOMON_CACHE_VALIDATE=dirs: no per-file stat; names and folder mtimes still invalidate."""
    from gnomon.core.datasets import folder

    root = tmp_path / "copy"
    shutil.copytree(mnist_sample_dirs["testing"], root)
    monkeypatch.setenv("GNOMON_CACHE_VALIDATE", "dirs")
    first = load_image_folder(root, progress=False)
    stats = []
    real_list = folder._list_class
    monkeypatch.setattr(folder, "_list_class", lambda r, c, stat=True: stats.append(stat) or real_list(r, c, stat))
    with monkeypatch.context() as m:
        m.setattr(folder, "decode_files", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
        again = load_image_folder(root, progress=False)
        np.testing.assert_array_equal(first.x, again.x)
        assert stats and not any(stats)  # listed without stat
        os.rename(root / first.files[0], root / first.files[0].replace(".png", "_renamed.png"))
        with pytest.raises(AssertionError, match="decoded"):
            load_image_folder(root, progress=False)
    assert len(load_image_folder(root, progress=False)) == len(first)
    monkeypatch.setenv("GNOMON_CACHE_VALIDATE", "sometimes")
    with pytest.raises(DatasetError, match="GNOMON_CACHE_VALIDATE must be one of auto, files, dirs"):
        load_image_folder(root, progress=False)


def _no_listing(monkeypatch, folder):
    listed = []
    real_list = folder._list_class
    monkeypatch.setattr(folder, "_list_class", lambda r, c, stat=True: listed.append(c) or real_list(r, c, stat))
    return listed


def test_a_sealed_folder_loads_from_its_seal_and_cache_without_listing(tmp_path, mnist_sample_dirs, gnomon_home,
                                                                       monkeypatch):
    """The cheap path: a valid seal + the cache; nothing listed, nothing decoded, same dataset."""
    from gnomon.core.datasets import folder

    root = tmp_path / "sealed"
    shutil.copytree(mnist_sample_dirs["testing"], root)
    reference = load_image_folder(root, cache=False, progress=False)
    folder.seal_folder(root, content="test")
    load_image_folder(root, progress=False)  # fills the cache
    listed = _no_listing(monkeypatch, folder)
    monkeypatch.setattr(folder, "decode_files", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    again = load_image_folder(root, progress=False)
    assert listed == []
    np.testing.assert_array_equal(again.x, reference.x)
    np.testing.assert_array_equal(again.y, reference.y)
    assert again.files == reference.files and again.class_names == reference.class_names
    assert again.metadata == reference.metadata
    # GNOMON_CACHE_VALIDATE=files never trusts a seal
    monkeypatch.setenv("GNOMON_CACHE_VALIDATE", "files")
    with pytest.raises(AssertionError, match="decoded"):  # its own cache key: not filled yet
        load_image_folder(root, progress=False)
    assert listed


@pytest.mark.parametrize("change", ["add", "remove", "rename", "new_class", "manifest"])
def test_any_change_to_a_sealed_folder_voids_the_seal(change, tmp_path, mnist_sample_dirs, gnomon_home):
    from gnomon.core.datasets import folder

    root = tmp_path / "sealed"
    shutil.copytree(mnist_sample_dirs["testing"], root)
    folder.seal_folder(root)
    first = load_image_folder(root, progress=False)
    victim = root / first.files[0]
    if change == "add":
        shutil.copy(victim, victim.with_name("extra.png"))
    elif change == "remove":
        victim.unlink()
    elif change == "rename":
        victim.rename(victim.with_name("renamed.png"))
    elif change == "new_class":
        (root / "zz").mkdir()
        shutil.copy(victim, root / "zz" / "x.png")
    else:
        (root / folder.MANIFEST).write_text(json.dumps({"note": "edited"}))
    assert folder._sealed_scan(root) is None
    after = load_image_folder(root, progress=False)
    expected = {"add": 1, "remove": -1, "rename": 0, "new_class": 1, "manifest": 0}[change]
    assert len(after) == len(first) + expected
    if change == "rename":
        assert any(f.endswith("renamed.png") for f in after.files)
    if change == "manifest":
        assert after.metadata["note"] == "edited"


def test_prepared_mnist_is_sealed_and_older_preparations_get_sealed(gnomon_home, tmp_path):
    from gnomon.core.datasets import folder, prepare_mnist

    from .conftest import SAMPLE_IDX

    dest = tmp_path / "mnist"
    prepare_mnist(dest, str(SAMPLE_IDX), progress=False)
    for split, n in (("training", 1000), ("testing", 300)):
        scan = folder._sealed_scan(dest / split)
        assert scan is not None and len(scan.files) == n
        assert json.loads((dest / split / folder.SEAL).read_text())["content"].startswith(f"mnist/{split}: sha256 ")
        (dest / split / folder.SEAL).unlink()  # as prepared by an earlier gnomon
    prepare_mnist(dest, progress=False)  # already prepared: nothing rewritten, seals added
    assert folder._sealed_scan(dest / "training") is not None and folder._sealed_scan(dest / "testing") is not None


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"seal": 99}', '{"seal": 1, "class_mtimes": {}}'])
def test_a_damaged_seal_is_ignored_and_the_folder_scanned(garbage, tmp_path, mnist_sample_dirs, gnomon_home):
    from gnomon.core.datasets import folder

    root = tmp_path / "sealed"
    shutil.copytree(mnist_sample_dirs["testing"], root)
    reference = load_image_folder(root, cache=False, progress=False)
    (root / folder.SEAL).write_text(garbage)
    assert folder._sealed_scan(root) is None
    again = load_image_folder(root, progress=False)
    assert again.files == reference.files
    np.testing.assert_array_equal(again.x, reference.x)
