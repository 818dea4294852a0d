"""Plugin discovery and loading: the plugin-manager factory.

Load order: the builtin plugins (entry points in the group ``gnomon.builtin`` of gnomon's own
distribution, loaded through the same hooks as everyone else), then entry points in the group
``gnomon``, then plugin directories listed in ``GNOMON_PLUGIN_PATH``. A later plugin with the
same name as an earlier one replaces it (so plugins pulled from S3 onto a worker win over what
happens to be installed).

A *plugin package* is a plugin module that sets ``GNOMON_PLUGINS`` to a sequence of its
submodule names: each submodule is then registered as its own plugin, named
``<package>.<submodule>``, and can be listed and disabled on its own (the builtins are one).
A plugin-package directory may hold a ``PLUGIN_PARTS`` file (one part per line, written by
``gnomon plugins sync``): only those parts load, so a part disabled where the bundle was made
stays off on every worker that pulls it.

Environment:
    GNOMON_LOAD_PLUGINS     comma-separated allow-list of non-builtin plugins; set and
                            empty means builtins only.
    GNOMON_DISABLE_PLUGINS  comma-separated deny-list; a package name (``builtin``) disables
                            all its plugins, ``builtin.triggers`` one of them.
    GNOMON_PLUGIN_PATH      os.pathsep-separated directories of plugins (``*.py`` files
                            or packages), e.g. the cache ``gnomon plugins pull`` fills.
    GNOMON_STRICT_PLUGINS=1 a broken plugin is fatal instead of reported.
    GNOMON_TRACE_PLUGINS=1  trace every hook call to stderr.

Nothing is registered as an import side effect: every call of :func:`load_plugins`
builds a fresh :class:`pluggy.PluginManager`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pluggy

from . import HOOK_API_VERSION, hookspecs, settings
from .errors import DuplicateNameError, GnomonError, HookError, PluginError
from .registry import AttackSpec, DefenseSpec, ModelSpec, Registry, WorkflowSpec
from .tasks import Task

ENTRY_POINT_GROUP = "gnomon"
#: Entry points of gnomon's own distribution naming its builtin plugins (see pyproject.toml);
#: core learns which modules are builtin only from this metadata.
BUILTIN_GROUP = "gnomon.builtin"
#: In a plugin-package directory: the parts to load (the others are skipped).
PARTS_FILE = "PLUGIN_PARTS"
HEAVY_MODULES = ("tensorflow", "keras", "art", "mlflow", "torch", "jax")
REGISTER_HOOKS = {
    "register_tasks": ("task", Task),
    "register_models": ("model", ModelSpec),
    "register_attacks": ("attack", AttackSpec),
    "register_defenses": ("defense", DefenseSpec),
    "register_workflows": ("workflow", WorkflowSpec),
}


@dataclass
class PluginInfo:
    """What ``gnomon plugins list`` shows about one plugin."""

    name: str
    source: str  # "builtin", "entry point" or "directory"
    version: str = ""
    #: the plugin package this plugin came from (``builtin`` for ``builtin.models``), else ""
    package: str = ""
    location: str = ""
    module: str = ""
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    hint: str | None = None
    warnings: list[str] = field(default_factory=list)
    api_version: str | None = None
    shadows: str | None = None
    plugin_object: Any = field(default=None, repr=False)

    @property
    def broken(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "version": self.version,
            "location": self.location,
            "module": self.module,
            "hooks": self.hooks,
            "broken": self.broken,
            "error": self.error,
            "hint": self.hint,
            "warnings": self.warnings,
            "shadows": self.shadows,
            "package": self.package,
        }


class PluginSet:
    """A loaded plugin manager plus what was learnt loading it.

    Build one with :func:`load_plugins`. ``registry`` runs the ``register_*`` hooks
    on first use; ``hook`` is the typed facade over ``pm.hook``.
    """

    def __init__(self, pm: pluggy.PluginManager, infos: dict[str, PluginInfo], strict: bool):
        self.pm = pm
        self.infos = infos
        self.strict = strict
        self._registry: Registry | None = None
        #: plugins found but not loaded: ``(name, source, reason)``
        self.skipped: list[tuple[str, str, str]] = []

    # -- plugin bookkeeping -------------------------------------------------
    @property
    def loaded(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if not i.broken]

    @property
    def broken(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.broken]

    def mark_broken(self, name: str, error: str, hint: str | None = None) -> None:
        info = self.infos[name]
        info.error, info.hint = error, hint
        if info.plugin_object is not None and self.pm.is_registered(info.plugin_object):
            self.pm.unregister(info.plugin_object)
        if self.strict:
            raise PluginError(f"plugin '{name}' is broken: {error}" + (f" ({hint})" if hint else ""))

    # -- registry -----------------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        registry = Registry()
        for info in list(self.infos.values()):
            if info.broken or info.plugin_object is None:
                continue
            staged: list[tuple[str, Any]] = []
            try:
                for hook_name, (kind, cls) in REGISTER_HOOKS.items():
                    if hook_name not in info.hooks:
                        continue
                    self._call_one(hook_name, info, register=_Recorder(kind, cls, staged, info.name))
                trial = Registry(**{k: dict(v) for k, v in registry.__dict__.items()})
                for kind, item in staged:
                    trial.add(kind, item, info.name)
            except DuplicateNameError as exc:
                self.mark_broken(info.name, str(exc), "two plugins provide the same name")
                continue
            except GnomonError as exc:
                self.mark_broken(info.name, str(exc), "the plugin registered something invalid")
                continue
            except Exception as exc:  # a plugin's hook raised
                self.mark_broken(info.name, f"{type(exc).__name__}: {exc}", _hint_for(exc))
                continue
            registry = trial
        return registry

    def _call_one(self, hook_name: str, info: PluginInfo, **kwargs: Any) -> Any:
        """Call one plugin's implementation of a hook through pluggy (so tracing sees it)."""
        others = [i.plugin_object for i in self.infos.values()
                  if i.plugin_object is not None and i is not info and self.pm.is_registered(i.plugin_object)]
        return self.pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)

    def add_commands(self, cli) -> None:
        """Call every plugin's ``register_commands(cli)``; a failing plugin is reported, not fatal."""
        for info in list(self.infos.values()):
            if info.broken or "register_commands" not in info.hooks:
                continue
            try:
                self._call_one("register_commands", info, cli=cli)
            except Exception as exc:
                self.mark_broken(info.name, f"register_commands failed: {type(exc).__name__}: {exc}", _hint_for(exc))


    # -- run lifecycle hooks ---------------------------------------------------
    def lifecycle_impls(self, hook_name: str) -> list[Any]:
        """The implementations of ``before_run``/``after_run`` in pluggy's call order (last loaded first)."""
        return list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))

    def call_before_run(self, ctx: Any) -> None:
        """Every plugin's ``before_run(ctx)``; the first that raises stops (see the hookspec)."""
        for impl in self.lifecycle_impls("before_run"):
            try:
                impl.function(**_hook_args(impl, ctx=ctx))
            except Exception as exc:
                raise HookError(impl.plugin_name, "before_run", exc) from exc

    def call_after_run(self, ctx: Any, result: Any) -> list[HookError]:
        """Every plugin's ``after_run(ctx, result)``; each error is collected, none stops the others."""
        errors: list[HookError] = []
        for impl in self.lifecycle_impls("after_run"):
            try:
                impl.function(**_hook_args(impl, ctx=ctx, result=result))
            except Exception as exc:
                errors.append(HookError(impl.plugin_name, "after_run", exc))
        return errors


def _hook_args(impl: Any, **available: Any) -> dict[str, Any]:
    # pluggy lets an implementation take a subset of the spec's arguments
    return {name: available[name] for name in impl.argnames}


class _Recorder:
    """The ``register`` callable handed to a plugin: type-checks and stages each item."""

    def __init__(self, kind: str, cls: type, staged: list, plugin: str):
        self.kind, self.cls, self.staged, self.plugin = kind, cls, staged, plugin

    def __call__(self, item: Any = None, path: Any = None, **kwargs: Any) -> None:
        if self.kind == "workflow" and isinstance(item, str):
            item = WorkflowSpec(name=item, path=str(path))
        if not isinstance(item, self.cls):
            raise GnomonError(
                f"plugin '{self.plugin}' passed {type(item).__name__} to register_{self.kind}s; "
                f"expected {self.cls.__module__}.{self.cls.__name__}"
            )
        self.staged.append((self.kind, item))


def _hint_for(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError):
        return f"install the missing module '{exc.name}' or disable the plugin with GNOMON_DISABLE_PLUGINS"
    if isinstance(exc, SyntaxError):
        return "the plugin's source has a syntax error"
    return "disable it with GNOMON_DISABLE_PLUGINS=<name> or run with GNOMON_STRICT_PLUGINS=1 for a traceback"


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 500 else text[:497] + "..."


def new_plugin_manager() -> pluggy.PluginManager:
    """A fresh plugin manager that knows gnomon's hook specifications and nothing else."""
    pm = pluggy.PluginManager("gnomon")
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(
    *,
    load: Iterable[str] | None = None,
    disable: Iterable[str] | None = None,
    strict: bool | None = None,
    plugin_path: Iterable[str | os.PathLike] | None = None,
    builtins: bool = True,
    entry_points: Iterable[Any] | None = None,
    environ=None,
    trace: bool | None = None,
) -> PluginSet:
    """Build a fresh plugin manager and load builtins, entry points and plugin directories.

    Arguments default to the ``GNOMON_*`` environment variables (see the module doc).
    ``entry_points`` replaces the installed entry points (tests pass fake ones).
    """
    load = settings.names("GNOMON_LOAD_PLUGINS", environ) if load is None else list(load)
    disable = set(settings.names("GNOMON_DISABLE_PLUGINS", environ) or []) if disable is None else set(disable)
    strict = settings.flag("GNOMON_STRICT_PLUGINS", environ) if strict is None else strict
    trace = settings.flag("GNOMON_TRACE_PLUGINS", environ) if trace is None else trace
    if plugin_path is None:
        plugin_path = settings.paths("GNOMON_PLUGIN_PATH", environ)

    pm = new_plugin_manager()
    infos: dict[str, PluginInfo] = {}
    plugins = PluginSet(pm, infos, strict)

    def allowed(name: str, source: str, dist_name: str = "") -> bool:
        if name in disable or (dist_name and dist_name in disable):
            plugins.skipped.append((name, source, "disabled by GNOMON_DISABLE_PLUGINS"))
            return False
        if load is None or name in load or (bool(dist_name) and dist_name in load):
            return True
        if any(item.startswith(name + ".") for item in load):
            return True  # a plugin package, some of whose parts are allowed (checked by load_part)
        plugins.skipped.append((name, source, "not in GNOMON_LOAD_PLUGINS"))
        return False

    def load_part(name: str, source: str) -> bool:
        """Whether one plugin of a package passes the deny-list (and, for non-builtins, the allow-list)."""
        if name in disable:
            plugins.skipped.append((name, source, "disabled by GNOMON_DISABLE_PLUGINS"))
            return False
        package = name.split(".")[0]
        if source == "builtin" or load is None or name in load or package in load:
            return True
        plugins.skipped.append((name, source, "not in GNOMON_LOAD_PLUGINS"))
        return False

    installed = None
    if builtins or entry_points is None:
        from importlib.metadata import entry_points as _eps

        installed = _eps()  # one scan of the installed metadata serves both groups
    if builtins:
        for ep in sorted(installed.select(group=BUILTIN_GROUP), key=lambda e: e.name):
            if ep.name in disable:
                plugins.skipped.append((ep.name, "builtin", "disabled by GNOMON_DISABLE_PLUGINS"))
                continue
            dist = getattr(ep, "dist", None)
            _register(plugins, PluginInfo(name=ep.name, source="builtin", version=getattr(dist, "version", "") or "",
                                          module=ep.value), ep.load, load_part)

    if entry_points is None:
        entry_points = installed.select(group=ENTRY_POINT_GROUP)
    for ep in sorted(entry_points, key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        dist_name = getattr(dist, "name", "") or ""
        if not allowed(ep.name, "entry point", dist_name):
            continue
        version = getattr(dist, "version", "") or ""
        location = _dist_location(dist)
        _register(plugins, PluginInfo(name=ep.name, source="entry point", version=version,
                                      location=location, module=ep.value), ep.load, load_part)

    def synced_part(listed: set[str] | None):
        def check(name: str, source: str) -> bool:
            if listed is not None and name.split(".", 1)[1] not in listed:
                plugins.skipped.append((name, source, f"not loaded where the bundle was synced ({PARTS_FILE})"))
                return False
            return load_part(name, source)

        return check

    for directory in plugin_path:
        for name, path, loader in _directory_plugins(Path(directory)):
            if not allowed(name, "directory"):
                continue
            _register(plugins, PluginInfo(name=name, source="directory", location=str(path),
                                          module=f"gnomon_dir_plugins.{name}",
                                          version=_dir_version(path)), loader, synced_part(_dir_parts(path)))

    if trace:
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return plugins


def _register(plugins: PluginSet, info: PluginInfo, importer, load_part=None) -> None:
    """Import one plugin module and register it (each part of a plugin package on its own).

    Failures mark the plugin broken; nothing here raises unless the set is strict.
    """
    module = _import_plugin(plugins, info, importer)
    if module is None:
        return
    parts = getattr(module, "GNOMON_PLUGINS", None)
    if parts is None:
        _add(plugins, info, module)
        return
    del plugins.infos[info.name]  # a package is not a plugin itself: its parts are
    declared = getattr(module, "GNOMON_HOOK_API", None)
    for part in parts:
        name = f"{info.name}.{part}"
        if load_part is not None and not load_part(name, info.source):
            continue
        sub = PluginInfo(name=name, source=info.source, version=info.version, location=info.location,
                         module=f"{module.__name__}.{part}", package=info.name)
        submodule = _import_plugin(plugins, sub, lambda m=sub.module: importlib.import_module(m))
        if submodule is not None:
            if getattr(submodule, "GNOMON_HOOK_API", None) is None and declared is not None:
                sub.api_version = str(declared)
            _add(plugins, sub, submodule)


def _import_plugin(plugins: PluginSet, info: PluginInfo, importer):
    """Import a plugin's module, recording a failure (and the heavy imports it made) on ``info``."""
    previous = plugins.infos.get(info.name)
    if previous is not None:
        info.shadows = f"{previous.source} {previous.location or previous.module}".strip()
        if previous.plugin_object is not None and plugins.pm.is_registered(previous.plugin_object):
            plugins.pm.unregister(previous.plugin_object)
    plugins.infos[info.name] = info
    before = set(sys.modules)
    try:
        module = importer()
    except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        info.error, info.hint = _short_error(exc), _hint_for(exc)
        info.warnings.append("".join(traceback.format_exception_only(type(exc), exc)).strip())
        if plugins.strict:
            raise PluginError(f"plugin '{info.name}' failed to import: {info.error}") from exc
        return None
    heavy = sorted(({m.split(".")[0] for m in set(sys.modules) - before} | _heavy_references(module))
                   & set(HEAVY_MODULES))
    if heavy:
        info.warnings.append(
            f"imports {', '.join(heavy)} at import time, which slows every gnomon command; "
            "import it inside the functions that need it"
        )
    return module


def _add(plugins: PluginSet, info: PluginInfo, module) -> None:
    """Check a plugin module's hook API version and register it with pluggy."""
    declared = getattr(module, "GNOMON_HOOK_API", None)
    if declared is not None:
        info.api_version = str(declared)
    if info.api_version is not None and info.api_version.split(".")[0] != HOOK_API_VERSION.split(".")[0]:
        plugins.mark_broken(
            info.name,
            f"plugin '{info.name}' was written for gnomon hook API {info.api_version}, "
            f"but this gnomon provides hook API {HOOK_API_VERSION}",
            "upgrade the plugin (or gnomon) so that the major versions match",
        )
        return
    try:
        plugins.pm.register(module, name=info.name)
        plugins.pm.check_pending()
    except Exception as exc:
        if plugins.pm.is_registered(module):
            plugins.pm.unregister(module)
        info.error, info.hint = _short_error(exc), "a @hookimpl does not match gnomon's hook specifications"
        if plugins.strict:
            raise PluginError(f"plugin '{info.name}' is invalid: {info.error}") from exc
        return
    info.plugin_object = module
    info.hooks = sorted(impl.name for impl in plugins.pm.get_hookcallers(module) or [])
    if not info.location:
        info.location = str(Path(getattr(module, "__file__", "") or "").parent)


def _heavy_references(module) -> set[str]:
    """Top-level names of modules bound at module level in ``module`` or its loaded submodules.

    Catches ``import tensorflow as tf`` even when tensorflow was already imported by someone
    else (then it is not a *new* module in ``sys.modules`` and the import-diff misses it).
    """
    import types

    prefix = getattr(module, "__name__", "") + "."
    modules = [module] + [m for n, m in list(sys.modules.items()) if n.startswith(prefix) and m is not None]
    found: set[str] = set()
    for mod in modules:
        for value in list(vars(mod).values()):
            if isinstance(value, types.ModuleType):
                found.add(value.__name__.split(".")[0])
            elif isinstance(value, type) or callable(value):
                owner = getattr(value, "__module__", None)
                if isinstance(owner, str):
                    found.add(owner.split(".")[0])
    return found


def _dist_location(dist) -> str:
    if dist is None:
        return ""
    try:
        return str(dist.locate_file(""))
    except Exception:
        return ""


def _dir_version(path: Path) -> str:
    meta = (path if path.is_dir() else path.parent) / "PLUGIN_VERSION"
    try:
        return meta.read_text().strip() if path.is_dir() and meta.exists() else ""
    except OSError:
        return ""


def _dir_parts(path: Path) -> set[str] | None:
    """The parts listed in a plugin-package directory's ``PLUGIN_PARTS`` (None: no such file)."""
    listing = path / PARTS_FILE
    try:
        text = listing.read_text() if path.is_dir() and listing.exists() else None
    except OSError:
        return None
    return None if text is None else {line.strip() for line in text.splitlines() if line.strip()}


def _directory_plugins(directory: Path):
    """Yield ``(name, path, loader)`` for each plugin in a plugin directory, sorted by name."""
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if path.name.startswith((".", "_")):
            continue
        if path.is_file() and path.suffix == ".py":
            name = path.stem
        elif path.is_dir() and (path / "__init__.py").exists():
            name = path.name
        else:
            continue
        yield name, path, (lambda p=path, n=name: _import_path(n, p))


def _import_path(name: str, path: Path):
    module_name = f"gnomon_dir_plugins.{name}"
    if "gnomon_dir_plugins" not in sys.modules:
        import types

        pkg = types.ModuleType("gnomon_dir_plugins")
        pkg.__path__ = []  # namespace for directory plugins
        sys.modules["gnomon_dir_plugins"] = pkg
    for key in [k for k in sys.modules if k == module_name or k.startswith(module_name + ".")]:
        del sys.modules[key]  # a re-pull must load the new code, not a stale module
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(
            module_name, path / "__init__.py", submodule_search_locations=[str(path)]
        )
    else:
        spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import plugin from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module
