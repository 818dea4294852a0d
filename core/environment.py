"""The environment that decides a run's numbers, recorded on every run.

The same seed gives bit-identical numbers only on the same hardware with the same library
versions and the same numerical settings: floating-point sums are not associative, and the
CPU's instruction set, oneDNN's kernels and the number of threads all change the order in
which TensorFlow adds things up. Every run therefore carries, as ``gnomon.env.*`` tags:

- ``cpu``: the CPU model; ``isa``: its vector instruction sets TensorFlow's kernels use (AVX2,
  AVX-512, ...); ``cpus``: CPUs this process may use (of how many);
- ``tensorflow``, ``keras``, ``art``, ``numpy``, ``python``, ``platform``;
- ``onednn``: whether TensorFlow's oneDNN kernels are on (``TF_ENABLE_ONEDNN_OPTS``; TensorFlow
  turns them on by default on x86-64 Linux);
- ``threads``: TensorFlow's intra-/inter-op thread settings and ``OMP_NUM_THREADS``;
- ``id``: a short hash of all of the above. Two runs with the same seed and the same ``id``
  should agree bit for bit; across different ``id`` values expect differences of the order of
  the seed-to-seed spread.

Nothing here imports TensorFlow: versions come from the installed distributions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from typing import Mapping

TAG_PREFIX = "gnomon.env."

_DISTRIBUTIONS = (("tensorflow", "tensorflow"), ("keras", "keras"), ("art", "adversarial-robustness-toolbox"),
                  ("numpy", "numpy"))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


#: /proc/cpuinfo flags that change which kernels oneDNN and Eigen pick.
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd")


def cpu_features() -> str:
    """The vector instruction sets of this CPU that matter for TensorFlow's kernels (Linux; else ``unknown``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    present = set(value.split())
                    return " ".join(flag for flag in _ISA_FLAGS if flag in present) or "none"
    except OSError:
        pass
    return "unknown"


def onednn(environ: Mapping[str, str] | None = None) -> str:
    """``on`` or ``off``: TensorFlow's oneDNN kernels as configured for this process."""
    environ = os.environ if environ is None else environ
    value = (environ.get("TF_ENABLE_ONEDNN_OPTS") or "").strip().lower()
    if value in ("0", "false", "off", "no"):
        return "off"
    if value in ("1", "true", "on", "yes"):
        return "on"
    # TensorFlow's default since 2.9: on for x86-64 Linux builds, off elsewhere
    return "on" if sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64") else "off"


def threads(environ: Mapping[str, str] | None = None) -> str:
    """TensorFlow's intra-/inter-op thread counts (``auto`` = one per CPU) and ``OMP_NUM_THREADS``."""
    environ = os.environ if environ is None else environ
    intra = environ.get("TF_NUM_INTRAOP_THREADS") or "auto"
    inter = environ.get("TF_NUM_INTEROP_THREADS") or "auto"
    tf = sys.modules.get("tensorflow")
    if tf is not None:  # already imported by this process: ask it (0 = auto)
        try:
            intra = str(tf.config.threading.get_intra_op_parallelism_threads() or "auto")
            inter = str(tf.config.threading.get_inter_op_parallelism_threads() or "auto")
        except Exception:  # pragma: no cover - a TensorFlow without tf.config.threading
            pass
    return f"intra_op={intra} inter_op={inter} omp={environ.get('OMP_NUM_THREADS') or 'unset'}"


def fingerprint(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Everything above as ``{name: value}`` (``id`` included)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    out = {"cpu": cpu_model(), "isa": cpu_features(), "cpus": f"{usable} of {os.cpu_count() or usable}"}
    for label, dist in _DISTRIBUTIONS:
        try:
            out[label] = version(dist)
        except PackageNotFoundError:
            out[label] = "not installed"
    out.update(python=platform.python_version(), platform=f"{platform.system()} {platform.machine()}",
               onednn=onednn(environ), threads=threads(environ))
    out["id"] = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:12]
    return out


def fingerprint_tags(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`fingerprint` as MLflow tags ``gnomon.env.<name>``."""
    return {TAG_PREFIX + key: value for key, value in fingerprint(environ).items()}


def from_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The fingerprint recorded in a run's tags (empty for runs made before gnomon recorded it)."""
    return {key[len(TAG_PREFIX):]: value for key, value in tags.items() if key.startswith(TAG_PREFIX)}
