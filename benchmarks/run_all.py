"""Run every benchmark in turn (full MNIST for the ML ones; takes long): python benchmarks/run_all.py [NAME ...]

Each benchmark prints its own figures and the ratio to a reference measured in the same run.
GNOMON_MNIST_SOURCE should point at the four MNIST IDX files when the machine is offline.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ORDER = ["startup", "handwritten", "dataset_load", "plugins", "sync", "train", "attacks", "defenses", "workflow"]


def main(argv: list[str]) -> int:
    names = argv or ORDER
    failed = []
    for name in names:
        script = HERE / f"bench_{name}.py"
        print(f"\n=== {script.name} ===", flush=True)
        if subprocess.run([sys.executable, str(script)]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
