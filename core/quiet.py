"""What reaches the console: the libraries' start-up noise is dropped, warnings that matter are kept.

At default verbosity the ``gnomon`` command drops exactly this, which no gnomon user can act on:

- TensorFlow's C++ start-up lines (absl's "All log messages before absl::InitializeLog()", the
  oneDNN note, the CUDA stub, the CPU-feature note). TensorFlow writes them to file descriptor 2
  while it is imported, before its logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` cannot stop
  them; the first import of ``tensorflow`` runs with fd 2 captured, and whatever else was written
  meanwhile is passed on. (Whether oneDNN is on is not lost: every run records it, see
  :mod:`gnomon.core.environment`.)
- TensorFlow's later C++ log lines, e.g. "failed call to cuInit" on a machine without a GPU
  (``TF_CPP_MIN_LOG_LEVEL=3`` unless set; TensorFlow's real errors still arrive as Python exceptions).
- ART's "PyTorch not found" ``UserWarning`` (gnomon uses ART's TensorFlow estimators).
- MLflow's "Successfully registered model" / "Created version" prints (see :func:`mlflow_chatter`).

What is kept, and made visible: deprecation warnings raised in gnomon's or a plugin's code
(Python hides ``DeprecationWarning`` outside ``__main__`` by default), gnomon's own warnings
(:class:`GnomonWarning`, e.g. a model that will be slow on this CPU, printed as one
``warning: ...`` line), broken plugins, and everything else.

``gnomon --verbose`` (or ``GNOMON_VERBOSE=1``, or ``--debug`` / ``GNOMON_DEBUG=1``) keeps it all.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import re
import sys
import warnings
from typing import Iterator

from . import settings

#: Lines TensorFlow writes to fd 2 while it is imported that carry nothing a user can act on.
TF_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+\s+\d+ \S+\.(cc|h):\d+\] "  # absl/TSL INFO and WARNING lines (errors are kept)
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.)"
)


class GnomonWarning(UserWarning):
    """A warning from gnomon itself that a user should see (e.g. a model that is slow on this CPU)."""


def verbose(environ=None) -> bool:
    """``--verbose`` / ``GNOMON_VERBOSE`` or ``--debug`` / ``GNOMON_DEBUG``: keep every library message."""
    return settings.verbose(environ)


def silence_libraries(plugin_modules: list[str] | tuple[str, ...] = ()) -> None:
    """Apply the console policy above to this process (the CLI calls it once; idempotent)."""
    show_warnings_from(("gnomon", *plugin_modules))
    warnings.filterwarnings("always", category=GnomonWarning)
    _install_warning_format()
    if verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", message=r"PyTorch not found", category=UserWarning, module=r"art(\.|$)")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


def show_warnings_from(modules) -> None:
    """Show deprecation warnings attributed to these modules (and their submodules) once per place."""
    for module in modules:
        if not module:
            continue
        pattern = re.escape(module) + r"(\.|$)"
        for category in (DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("default", category=category, module=pattern)


#: What MLflow prints (not logs) when it registers a model.
MLFLOW_CHATTER = re.compile(r"^(Successfully registered model '|Registered model '.*' already exists|"
                            r"Created version '\d+' of model )")


@contextlib.contextmanager
def mlflow_chatter() -> Iterator[None]:
    """Within the block MLflow's registry prints are dropped from stderr, unless verbose.

    MLflow prints them with ``print(file=...)`` to a stream that forwards to ``sys.stderr``
    (toggling that stream is not reliable: MLflow re-enables it on its own), so ``sys.stderr``
    is wrapped for the block and only those lines are dropped.
    """
    if verbose():
        yield
        return
    with contextlib.redirect_stderr(_DropLines(sys.stderr, MLFLOW_CHATTER)):
        yield


class _DropLines:
    """A text stream that forwards every write except lines matching ``pattern`` (and their newline)."""

    def __init__(self, stream, pattern: re.Pattern):
        self._stream, self._pattern, self._dropped = stream, pattern, False

    def write(self, text: str) -> int:
        if self._dropped and text == "\n":
            self._dropped = False
            return len(text)
        self._dropped = bool(self._pattern.match(text))
        if self._dropped:
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def captured_fd2(drop: re.Pattern = TF_STARTUP_NOISE) -> Iterator[None]:
    """Capture file descriptor 2 in the block; afterwards pass on every line ``drop`` does not match."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreter): nothing to do
        yield
        return
    import tempfile

    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            kept = "".join(line for line in text.splitlines(keepends=True) if not drop.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of a module with fd 2 captured (see :func:`captured_fd2`)."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            with captured_fd2():
                self._loader.exec_module(module)
        finally:  # afterwards nothing can tell the module was loaded through us
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Wraps the loader of the first import of one top-level module; removes itself after that."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


def _install_warning_format() -> None:
    """Print :class:`GnomonWarning` as one ``warning: ...`` line; other warnings as Python does."""
    if getattr(warnings.showwarning, "_gnomon", False):
        return
    original = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, GnomonWarning):
            stream = file or sys.stderr
            try:
                stream.write(f"warning: {message}\n")
            except (OSError, ValueError):
                pass
            return
        original(message, category, filename, lineno, file, line)

    showwarning._gnomon = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning
