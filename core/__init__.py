"""gnomon's engine: hook specifications, plugin loading, task registry, validation and tracking.

Nothing here imports TensorFlow, ART or MLflow at import time; the modules that need
them import them inside the functions that use them.
"""

from __future__ import annotations

__all__ = ["__version__", "HOOK_API_VERSION"]

try:  # pragma: no cover - trivial
    from importlib.metadata import version as _version

    __version__ = _version("gnomon")
except Exception:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

#: Version of the hook API. Plugins may declare the major version they were written
#: for with a module-level ``GNOMON_HOOK_API = "1"``; a different major is refused.
HOOK_API_VERSION = "1.1"
