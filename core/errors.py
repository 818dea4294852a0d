"""Exceptions with messages meant for people. The CLI maps them to exit codes."""

from __future__ import annotations


class GnomonError(Exception):
    """Base class for errors reported to the user without a traceback."""

    exit_code = 1


class ParamValidationError(GnomonError):
    """Parameters failed validation. ``errors`` maps each field to its messages."""

    exit_code = 2

    def __init__(self, task: str, errors: dict[str, list[str]]):
        self.task = task
        self.errors = {k: list(v) if isinstance(v, (list, tuple)) else [str(v)] for k, v in errors.items()}
        lines = [f"invalid parameters for task '{task}':"]
        for field, messages in sorted(self.errors.items()):
            for message in messages:
                lines.append(f"  {field}: {message}")
        super().__init__("\n".join(lines))


class MalformedParamError(ParamValidationError):
    """A ``-P`` option is not ``name=value`` (or names a parameter twice); no task is involved yet."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("-P", errors)
        lines = ["malformed -P option" + ("s" if sum(map(len, self.errors.values())) > 1 else "") + ":"]
        for option, messages in sorted(self.errors.items()):
            for message in messages:
                lines.append(f"  -P {option}: {message}")
        self.args = ("\n".join(lines),)


class UnknownNameError(GnomonError):
    """A task, model or other registered name does not exist."""

    exit_code = 2

    def __init__(self, kind: str, name: str, known: list[str]):
        import difflib

        self.kind, self.name = kind, name
        self.suggestions = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        message = f"unknown {kind} '{name}'"
        if self.suggestions:
            message += "; did you mean " + " or ".join(f"'{s}'" for s in self.suggestions) + "?"
        elif known:
            message += f"; known: {', '.join(sorted(known))}"
        super().__init__(message)


class DuplicateNameError(GnomonError):
    """Two plugins registered the same name."""

    def __init__(self, kind: str, name: str, first: str, second: str):
        self.kind, self.name, self.first, self.second = kind, name, first, second
        super().__init__(
            f"{kind} '{name}' is registered by two plugins: '{first}' and '{second}'. "
            f"Disable one of them with GNOMON_DISABLE_PLUGINS={second}"
        )


class PluginError(GnomonError):
    """A plugin failed to load while strict mode (GNOMON_STRICT_PLUGINS=1) is on."""


class TaskFailedError(GnomonError):
    """A task raised; its MLflow run is marked FAILED."""

    def __init__(self, task: str, run_id: str | None, cause: BaseException):
        self.task, self.run_id, self.cause = task, run_id, cause
        where = f" (run {run_id} marked FAILED)" if run_id else ""
        super().__init__(f"task '{task}' failed{where}: {type(cause).__name__}: {cause}")


class HookError(GnomonError):
    """A plugin's ``before_run`` or ``after_run`` hook raised; names the plugin and the hook."""

    def __init__(self, plugin: str, hook: str, cause: BaseException):
        self.plugin, self.hook, self.cause = plugin, hook, cause
        super().__init__(f"plugin '{plugin}' {hook}: {type(cause).__name__}: {cause}")
