"""Process-wide CLI state: the loaded plugins and engine, created lazily and once."""

from __future__ import annotations

import sys

_plugins = None
_engine = None
_warned = False
options = {"debug": False, "experiment": None}


def plugins():
    """The plugins for this invocation; broken ones are warned about once on stderr."""
    global _plugins
    if _plugins is None:
        from gnomon.core.plugins import load_plugins

        _plugins = load_plugins()
    return _plugins


def warn_broken() -> None:
    global _warned
    if _warned:
        return
    _warned = True
    for info in plugins().broken:
        hint = f" ({info.hint})" if info.hint else ""
        sys.stderr.write(f"warning: plugin '{info.name}' is broken and was not loaded: {info.error}{hint}\n")


def engine(experiment: str | None = None):
    """The engine for this invocation."""
    global _engine
    if _engine is None or (experiment and _engine.experiment != experiment):
        from gnomon.core.engine import Engine

        _engine = Engine(plugins(), experiment=experiment or options["experiment"])
        _ = _engine.registry  # build now so registration errors are reported before work starts
        warn_broken()
    return _engine


def reset() -> None:
    """Forget loaded plugins (tests use a fresh plugin manager per test)."""
    global _plugins, _engine, _warned
    _plugins, _engine, _warned = None, None, False
