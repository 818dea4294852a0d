"""Third-party plugin costs: start-up with the contrib plugins, and feature squeezing throughput.

Run: python benchmarks/bench_plugins.py [--runs N] [--images N]

1. ``gnomon tasks list`` median wall time with every installed plugin (the contrib plugins
   included) vs builtins only (``GNOMON_LOAD_PLUGINS=""``), measured in the same run: the ratio
   is what installing the two contrib plugins costs every command.
2. The ``feature_squeezing`` defense (ART FeatureSqueezing, through the registry) on N MNIST-sized
   images vs the same formula in plain NumPy (``rint(x * (2**b - 1)) / (2**b - 1)``); outputs are
   checked equal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(cmd: list[str], runs: int, env: dict) -> list[float]:
    """Wall times of ``runs`` executions of ``cmd`` (after one warm-up run)."""
    subprocess.run(cmd, capture_output=True, env=env)
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, env=env)
        out.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-500:]}")
    return out


def startup(runs: int) -> None:
    env = {**os.environ, "GNOMON_HOME": tempfile.mkdtemp(prefix="gnomon-bench-home-")}
    cmd = [str(BIN / "gnomon"), "tasks", "list", "--json"]
    with_plugins = statistics.median(timed(cmd, runs, env))
    builtins_only = statistics.median(timed(cmd, runs, {**env, "GNOMON_LOAD_PLUGINS": ""}))
    print(f"gnomon tasks list, all plugins:   median {with_plugins:.3f} s over {runs} runs")
    print(f"gnomon tasks list, builtins only: median {builtins_only:.3f} s (reference)")
    print(f"ratio all/builtins: {with_plugins / builtins_only:.2f}")


def squeezing(n_images: int, bits: int = 3) -> None:
    import numpy as np

    from gnomon.core.plugins import load_plugins

    registry = load_plugins(environ={}).registry
    if "feature_squeezing" not in registry.defenses:
        print("feature_squeezing not installed: pip install -e plugins/contrib/gnomon-feature-squeezing")
        return
    x = np.random.default_rng(0).random((n_images, 28, 28, 1), dtype=np.float32)
    defense = registry.defenses["feature_squeezing"].factory(bits)
    defense(x[:10])  # warm-up
    start = time.perf_counter()
    squeezed = defense(x)[0]
    art_s = time.perf_counter() - start
    top = 2 ** bits - 1
    start = time.perf_counter()
    reference = np.rint(x * top) / top
    numpy_s = time.perf_counter() - start
    assert np.allclose(squeezed, reference, atol=1e-6), "ART and the NumPy formula disagree"
    print(f"feature_squeezing (ART) on {n_images} images: {art_s:.3f} s ({n_images / art_s:,.0f} images/s)")
    print(f"NumPy formula (reference):          {numpy_s:.3f} s ({n_images / numpy_s:,.0f} images/s)")
    print(f"ratio ART/NumPy: {art_s / numpy_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--images", type=int, default=10_000)
    args = parser.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    startup(args.runs)
    squeezing(args.images)


if __name__ == "__main__":
    main()
