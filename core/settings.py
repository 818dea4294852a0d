"""Every ``GNOMON_*`` environment variable, read in one place with one rule for true/false.

Values are read when asked for (not at import), so a test or a worker that changes
``os.environ`` is seen at once. Every accessor takes an optional ``environ`` mapping (default
``os.environ``). A switch is on when its value is one of :data:`TRUTHY` (case and surrounding
space ignored); anything else, including unset or empty, is off.

:data:`SETTINGS` is the one table of them; README.md's "Settings" table is checked against it
by ``tests/test_settings.py``, and no other module reads a ``GNOMON_*`` variable itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

#: The values that switch a boolean setting on (lower-cased, stripped).
TRUTHY = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, default (as text) and what it does."""

    name: str
    default: str
    doc: str


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("GNOMON_HOME", "~/.gnomon", "where the embedded MLflow store, caches and MNIST live"),
    Setting("GNOMON_EXPERIMENT", "gnomon", "default experiment name"),
    Setting("GNOMON_DEBUG", "off", "switch: print tracebacks for gnomon's own errors (and everything `GNOMON_VERBOSE` shows)"),
    Setting("GNOMON_VERBOSE", "off", "switch: keep TensorFlow's start-up lines and the libraries' warnings on the "
                                     "console (`gnomon --verbose`)"),
    Setting("GNOMON_LOAD_PLUGINS", "(unset: all)",
            "comma-separated allow-list of non-builtin plugins (a package name allows all its parts, "
            "`pkg.part` one); set but empty = builtins only"),
    Setting("GNOMON_DISABLE_PLUGINS", "", "comma-separated deny-list: a plugin, a package (`builtin`: every "
                                          "builtin) or one part of it (`builtin.triggers`)"),
    Setting("GNOMON_PLUGIN_PATH", "", "`:`-separated plugin directories (`*.py` files or packages)"),
    Setting("GNOMON_STRICT_PLUGINS", "off", "switch: a broken plugin is fatal instead of reported"),
    Setting("GNOMON_TRACE_PLUGINS", "off", "switch: trace every hook call to stderr"),
    Setting("GNOMON_PLUGIN_CACHE", "$GNOMON_HOME/plugin-cache", "where `gnomon plugins pull` keeps pulled plugins"),
    Setting("GNOMON_PLUGINS_URL", "", "default `--plugins` S3 URL of `gnomon remote`/`workflow` commands"),
    Setting("GNOMON_WORKER_PLUGINS", "", "set by `gnomon remote worker --plugins`: the S3 URL a worker pulls from"),
    Setting("GNOMON_WORKER_CACHE", "", "set by `gnomon remote worker`: the worker's plugin cache"),
    Setting("GNOMON_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis for the RQ job queue"),
    Setting("GNOMON_MNIST_SOURCE", "", "folder or URL with the four MNIST IDX files"),
    Setting("GNOMON_MNIST_MIRRORS", "(the public mirrors)", "comma-separated MNIST mirror URLs"),
    Setting("GNOMON_DOWNLOAD_TIMEOUT", "30", "seconds before a download gives up"),
    Setting("GNOMON_OFFLINE", "off", "switch: never try to download (e.g. ImageNet weights)"),
    Setting("GNOMON_WORKERS", "(CPUs)", "processes for decoding/encoding image folders; 1 = in-process"),
    Setting("GNOMON_CACHE_VALIDATE", "auto", "how the decoded-dataset cache checks a folder: `auto` "
                                             "(trust gnomon's seals), `files`, `dirs`"),
    Setting("GNOMON_CACHE_MAX_MB", "4096", "size cap of the on-disk decoded-dataset cache"),
    Setting("GNOMON_TAR_MAX_MEMBER_MB", "64", "largest file a dataset artifact or plugin bundle may hold (MB)"),
    Setting("GNOMON_TAR_MAX_TOTAL_MB", "2048", "largest total of the files in one dataset artifact or bundle (MB)"),
    Setting("GNOMON_TAR_MAX_MEMBERS", "1000000", "most members one dataset artifact or bundle may hold"),
    Setting("GNOMON_BUNDLE_MAX_MB", "256", "largest plugin bundle (compressed) `plugins pull` downloads; a manifest "
                                           "naming a bigger one is refused before any download (MB)"),
    Setting("GNOMON_DATASET_MEMO_MB", "1024", "in-process memory for datasets (MB); 0 turns it off"),
    Setting("GNOMON_MODEL_MEMO", "4", "loaded models kept in process (count); 0 turns the model and "
                                      "prediction memos off"),
)}


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _known(name: str) -> str:
    if name not in SETTINGS:
        raise KeyError(f"{name} is not a gnomon setting (see gnomon.core.settings.SETTINGS)")
    return name


def truthy(value: str | None) -> bool:
    """The one rule: ``1``, ``true``, ``yes``, ``on`` (any case) are true; anything else is false."""
    return (value or "").strip().lower() in TRUTHY


def raw(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value as set (``None`` when unset)."""
    return _env(environ).get(_known(name))


def text(name: str, default: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value, or ``default`` when unset or empty."""
    value = raw(name, environ)
    return value if value else default


def flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """A switch (see :func:`truthy`)."""
    return truthy(raw(name, environ))


def number(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """A number; ``default`` when unset, empty or not a number."""
    value = raw(name, environ)
    try:
        return float(value) if value not in (None, "") else float(default)
    except ValueError:
        return float(default)


def names(name: str, environ: Mapping[str, str] | None = None) -> list[str] | None:
    """A comma-separated list (``None`` when unset, ``[]`` when set but empty)."""
    value = raw(name, environ)
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def paths(name: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """An ``os.pathsep``-separated list of paths."""
    return [p for p in (raw(name, environ) or "").split(os.pathsep) if p]


def turn_on(name: str) -> None:
    """Switch a setting on for this process and the processes it starts (e.g. ``gnomon --verbose``)."""
    os.environ[_known(name)] = "1"


# -- the settings the code asks for by meaning --------------------------------
def home(environ: Mapping[str, str] | None = None) -> Path:
    """``GNOMON_HOME`` (default ``~/.gnomon``)."""
    return Path(text("GNOMON_HOME", environ=environ) or Path.home() / ".gnomon").expanduser()


def debug(environ: Mapping[str, str] | None = None) -> bool:
    """``GNOMON_DEBUG``."""
    return flag("GNOMON_DEBUG", environ)


def verbose(environ: Mapping[str, str] | None = None) -> bool:
    """``GNOMON_VERBOSE`` or ``GNOMON_DEBUG``: keep every library message on the console."""
    return flag("GNOMON_VERBOSE", environ) or debug(environ)


def model_memo(environ: Mapping[str, str] | None = None) -> int:
    """``GNOMON_MODEL_MEMO``: how many loaded models to keep (0 turns model and prediction memos off)."""
    return max(0, int(number("GNOMON_MODEL_MEMO", 4, environ)))


def dataset_memo_bytes(environ: Mapping[str, str] | None = None) -> int:
    """``GNOMON_DATASET_MEMO_MB`` in bytes."""
    return max(0, int(number("GNOMON_DATASET_MEMO_MB", 1024, environ) * 2**20))


def tar_max_member_bytes(environ: Mapping[str, str] | None = None) -> int:
    """``GNOMON_TAR_MAX_MEMBER_MB`` in bytes (default 64 MB)."""
    return max(1, int(number("GNOMON_TAR_MAX_MEMBER_MB", 64, environ) * 2**20))


def tar_max_total_bytes(environ: Mapping[str, str] | None = None) -> int:
    """``GNOMON_TAR_MAX_TOTAL_MB`` in bytes (default 2048 MB)."""
    return max(1, int(number("GNOMON_TAR_MAX_TOTAL_MB", 2048, environ) * 2**20))


def tar_max_members(environ: Mapping[str, str] | None = None) -> int:
    """``GNOMON_TAR_MAX_MEMBERS`` (default 1,000,000)."""
    return max(1, int(number("GNOMON_TAR_MAX_MEMBERS", 1_000_000, environ)))


def bundle_max_bytes(environ: Mapping[str, str] | None = None) -> int:
    """``GNOMON_BUNDLE_MAX_MB`` in bytes (default 256 MB)."""
    return max(1, int(number("GNOMON_BUNDLE_MAX_MB", 256, environ) * 2**20))


def markdown_table() -> str:
    """The settings as a Markdown table (what README.md shows)."""
    lines = ["| variable | default | effect |", "| --- | --- | --- |"]
    for s in SETTINGS.values():
        lines.append(f"| `{s.name}` | {s.default or '-'} | {s.doc} |")
    return "\n".join(lines)
