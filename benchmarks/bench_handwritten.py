"""Benchmark: gnomon's hand-written replacements against the library code they replace, on the real workload.

The rule (issue 14): a hand-written replacement of library code stays only where the library is at
least 1.5x slower on the real workload, measured in the same run. The workloads:

- **PNG encoder** (``core/datasets/png.py``) vs PIL ``Image.save(format="PNG", compress_level=1)``:
  encoding the MNIST test set (10,000 28x28 grayscale images), as ``write_dataset_artifact`` does;
- **tar writer** (``core/datasets/tarwriter.py``) vs :mod:`tarfile` ``addfile``: writing those
  10,000 PNGs (plus class folders) into a tar, as ``write_dataset_artifact`` does;
- **LRU** (``core/memo.py``) vs ``cachetools.LRUCache``: the memo traffic of a baseline workflow,
  scaled up (a few dozen datasets and models, ~20 gets per put), so per-operation costs show.

Each pair is timed alternately, best of ``--repeat``; the printed ratio is library / hand-written.

Usage::

    .venv/bin/python benchmarks/bench_handwritten.py [--mnist /work/shared/data/mnist] [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "mnist_sample"
THRESHOLD = 1.5


def _images(folder: Path):
    from gnomon.core.datasets import idx

    files = idx.find_local_files(folder)
    return idx.parse_images(idx.read_raw(files["t10k-images-idx3-ubyte"]), "t10k-images-idx3-ubyte")


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _pil_png(img) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def bench_png(images, repeat: int) -> tuple[float, float]:
    import numpy as np
    from PIL import Image

    from gnomon.core.datasets.png import encode_png

    ours = [encode_png(img) for img in images[:50]]
    for img, blob in zip(images[:50], ours, strict=True):  # same pixels back
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob))), img)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(_pil_png(img)))), img)
    hand = lib = float("inf")
    for _ in range(repeat):
        hand = min(hand, _best(lambda: [encode_png(img) for img in images], 1))
        lib = min(lib, _best(lambda: [_pil_png(img) for img in images], 1))
    return hand, lib


def bench_tar(blobs: list[bytes], repeat: int) -> tuple[float, float]:
    from gnomon.core.datasets.tarwriter import TarWriter

    names = [f"testing/{i % 10}/{i}.png" for i in range(len(blobs))]
    mtime = int(time.time())

    def hand():
        stream = io.BytesIO()
        tar = TarWriter(stream, mtime=mtime)
        tar.add_dir("testing")
        for d in range(10):
            tar.add_dir(f"testing/{d}")
        for name, blob in zip(names, blobs, strict=True):
            tar.add_file(name, blob)
        tar.close()
        return stream.getvalue()

    def lib():
        stream = io.BytesIO()
        with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for d in ["testing"] + [f"testing/{d}" for d in range(10)]:
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
                tar.addfile(info)
            for name, blob in zip(names, blobs, strict=True):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(blob), mtime, 0o644
                tar.addfile(info, io.BytesIO(blob))
        return stream.getvalue()

    with tarfile.open(fileobj=io.BytesIO(hand())) as check:  # ours is a standard archive
        assert len(check.getmembers()) == len(blobs) + 11
    h = lb = float("inf")
    for _ in range(repeat):
        h = min(h, _best(hand, 1))
        lb = min(lb, _best(lib, 1))
    return h, lb


def bench_lru(repeat: int) -> tuple[float, float]:
    import cachetools

    from gnomon.core.memo import LRU

    keys = [("run", i) for i in range(40)]
    sizes = {k: 8 + (i % 5) for i, k in enumerate(keys)}  # "MB" per entry; budget 64

    def traffic(get, put):
        for rnd in range(200):
            for i, key in enumerate(keys):
                if get(key) is None:
                    put(key, sizes[key])
                for j in range(20):
                    get(keys[(i + j + rnd) % len(keys)])

    def hand():
        memo = LRU(lambda: 64, size=lambda v: v)
        traffic(memo.get, memo.put)

    def lib():
        cache = cachetools.LRUCache(maxsize=64, getsizeof=lambda v: v)
        traffic(cache.get, cache.__setitem__)

    h = lb = float("inf")
    for _ in range(repeat):
        h = min(h, _best(hand, 1))
        lb = min(lb, _best(lib, 1))
    return h, lb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mnist", type=Path, default=os.environ.get("GNOMON_MNIST_SOURCE") or SAMPLE)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    images = _images(Path(args.mnist))
    print(f"MNIST test images: {len(images)} from {args.mnist}; best of {args.repeat}, "
          f"load average {os.getloadavg()[0]:.1f} (2 cores)")
    from gnomon.core.datasets.png import encode_png

    rows = []
    hand, lib = bench_png(images, args.repeat)
    rows.append(("PNG encoder (core/datasets/png.py)", "PIL compress_level=1", hand, lib))
    blobs = [encode_png(img) for img in images]
    hand, lib = bench_tar(blobs, args.repeat)
    rows.append(("tar writer (core/datasets/tarwriter.py)", "tarfile.addfile", hand, lib))
    try:
        hand, lib = bench_lru(args.repeat)
        rows.append(("LRU (core/memo.py)", "cachetools.LRUCache", hand, lib))
    except ImportError:  # cachetools is not a gnomon dependency (mlflow's google-auth brings it)
        print("cachetools is not installed: LRU comparison skipped")
    print(f"{'hand-written':42} {'library':22} {'hand s':>8} {'lib s':>8} {'lib/hand':>9}  verdict")
    for name, library, hand, lib in rows:
        ratio = lib / hand
        verdict = "keep (library >= 1.5x slower)" if ratio >= THRESHOLD else "use the library"
        print(f"{name:42} {library:22} {hand:8.3f} {lib:8.3f} {ratio:9.2f}  {verdict}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
