"""Benchmark: loading the 70,000 MNIST PNGs, first (decode) and second (cache), against np.load.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_dataset_load.py`` (full MNIST from
``../shared/data/mnist``; everything happens in a throwaway GNOMON_HOME unless ``--home``).

Prints: MNIST preparation time (IDX -> 70,000 PNGs), first load (parallel decode + cache
write), cached load (median of N), the reference ``np.load`` of the same cached uint8 arrays,
``np.load`` + the uint8 -> float32 conversion every loader must do, and the ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "mnist"),
                        help="folder of the four MNIST IDX files (default: ../shared/data/mnist)")
    parser.add_argument("--home", default=None, help="GNOMON_HOME to use (default: a temporary folder, removed)")
    parser.add_argument("--repeat", type=int, default=5, help="cached-load repetitions (median reported)")
    args = parser.parse_args(argv)

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="gnomon-bench-data-"))
    os.environ["GNOMON_HOME"] = str(home)
    os.environ["GNOMON_MNIST_SOURCE"] = args.source
    import numpy as np

    from gnomon.core.datasets import cache_dir, clear_cache, load_image_folder, prepare_mnist
    from gnomon.core.datasets.dataset import to_float

    try:
        cpus = len(os.sched_getaffinity(0))
        print(f"machine: {cpus} CPUs available, load average {os.getloadavg()[0]:.2f} (1 min) at start")
        t0 = time.perf_counter()
        result = prepare_mnist(progress=False)
        t_prepare = time.perf_counter() - t0
        print(f"prepare MNIST (IDX -> {sum(result.counts.values())} PNGs): {t_prepare:.2f} s"
              + ("" if result.created else " (already prepared)"))
        splits = [result.dest / "training", result.dest / "testing"]

        def load_all():
            return [load_image_folder(s, progress=False) for s in splits]

        clear_cache()
        t0 = time.perf_counter()
        first = load_all()
        t_first = time.perf_counter() - t0
        n = sum(len(d) for d in first)
        assert n == 70000 or args.source != str(REPO.parent / "shared" / "data" / "mnist"), n

        arrays = sorted(cache_dir().glob("*.npy"))
        assert len(arrays) == 2, arrays
        # alternate the cached load and the reference so both see the same allocator and page-cache state
        cached_times, cached_cpu, ref_times, conv_times, ref_cpu, conv_cpu = [], [], [], [], [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            second = load_all()
            cached_times.append(time.perf_counter() - t0)
            cached_cpu.append(time.process_time() - c0)
            del second
            t0, c0 = time.perf_counter(), time.process_time()
            raw = [np.load(p) for p in arrays]
            ref_times.append(time.perf_counter() - t0)
            ref_cpu.append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            converted = [to_float(r) for r in raw]
            conv_times.append(time.perf_counter() - t0)
            conv_cpu.append(time.process_time() - c0)
            del raw, converted
        second = load_all()
        for a, b in zip(first, second, strict=True):
            assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
        t_cached = statistics.median(cached_times)

        t_ref = statistics.median(ref_times)
        t_ref_float = t_ref + statistics.median(conv_times)
        size = sum(p.stat().st_size for p in arrays)

        print(f"images: {n} ({first[0].image_shape}), cache: {len(arrays)} uint8 .npy files, {size / 1e6:.1f} MB")
        print(f"first load (decode {n} PNGs, parallel, + cache write): {t_first:.3f} s "
              f"({n / t_first:,.0f} images/s)")
        print(f"cached load, default (median of {args.repeat}):          {t_cached:.3f} s")
        print(f"reference np.load of the same arrays (median):        {t_ref:.3f} s")
        print(f"reference np.load + uint8->float32 (median):          {t_ref_float:.3f} s")
        print(f"ratio cached / np.load:                {t_cached / t_ref:.2f}")
        print(f"ratio cached / (np.load + to float32): {t_cached / t_ref_float:.2f}")
        print(f"ratio first / cached:                  {t_first / t_cached:.1f}")
        c_cached = statistics.median(cached_cpu)
        c_ref = statistics.median(ref_cpu)
        c_ref_float = c_ref + statistics.median(conv_cpu)
        print(f"CPU time (this process; less sensitive to other load): cached {c_cached:.3f} s, np.load {c_ref:.3f} s, "
              f"np.load + to float32 {c_ref_float:.3f} s; ratios {c_cached / max(c_ref, 1e-9):.1f} and "
              f"{c_cached / max(c_ref_float, 1e-9):.2f}")
        from gnomon.core.datasets.folder import _sealed_scan

        sealed = all(_sealed_scan(split) is not None for split in splits)
        print(f"  (MNIST folders sealed by 'gnomon data mnist': {sealed}; the default GNOMON_CACHE_VALIDATE=auto "
              "then reads the listing from the seal)")

        # the other validation modes, for comparison
        for mode, what in (("files", "stat of every file, seals ignored"), ("dirs", "names + folder mtimes")):
            os.environ["GNOMON_CACHE_VALIDATE"] = mode
            load_all()  # writes this mode's cache entries
            mode_times, mode_cpu = [], []
            for _ in range(args.repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                load_all()
                mode_times.append(time.perf_counter() - t0)
                mode_cpu.append(time.process_time() - c0)
            del os.environ["GNOMON_CACHE_VALIDATE"]
            t_mode = statistics.median(mode_times)
            print(f"cached load with GNOMON_CACHE_VALIDATE={mode} ({what}, median): {t_mode:.3f} s wall, "
                  f"{statistics.median(mode_cpu):.3f} s CPU; ratio to np.load + float32 {t_mode / t_ref_float:.2f}")

        # dataset artifacts: the 10,000 test images written to a tar and read back (no MLflow)
        from gnomon.core.datasets.artifacts import load_dataset_tar, write_dataset_tar

        test = first[1]
        tar = home / "bench.tar"
        t0 = time.perf_counter()
        write_dataset_tar(test, tar, "testing", progress=False)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = load_dataset_tar(tar, "testing", progress=False)
        t_read = time.perf_counter() - t0
        assert np.array_equal(back.x, test.x) and np.array_equal(back.y, test.y)
        print(f"artifact tar of {len(test)} images: write {t_write:.2f} s, read {t_read:.2f} s "
              f"({tar.stat().st_size / 1e6:.1f} MB)")
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
    finally:
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
