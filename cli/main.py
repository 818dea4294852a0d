"""Entry point of the ``gnomon`` command: builds the typer app and adds plugin commands.

Start-up is part of the product: nothing imported here (or by the commands' modules
at import time) may import tensorflow, art or mlflow.
"""

from __future__ import annotations

import sys

import typer

from . import state


def _version_callback(value: bool) -> None:
    if value:
        from gnomon.core import HOOK_API_VERSION, __version__

        typer.echo(f"gnomon {__version__} (hook API {HOOK_API_VERSION})")
        raise typer.Exit()


def build_app(with_plugins: bool = True) -> typer.Typer:
    """The root typer app with the core commands, plus every plugin's ``register_commands``."""
    app = typer.Typer(
        name="gnomon",
        help="gnomon: a plugin-based testbed for attacking and defending machine-learning models.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        # Plain click help: typer's rich help imports rich.markdown, markdown_it, rich.traceback and
        # pygments (about 90 ms), which alone would break the 0.3 s `gnomon --help` budget. Sub-apps and
        # plugin commands inherit the mode from this root app.
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                     help="Show the version and exit."),
        debug: bool = typer.Option(False, "--debug", envvar="GNOMON_DEBUG",
                                   help="Show full tracebacks on errors (and everything --verbose shows)."),
        verbose: bool = typer.Option(False, "--verbose", "-v", envvar="GNOMON_VERBOSE",
                                     help="Keep TensorFlow's start-up lines and the libraries' warnings."),
    ) -> None:
        state.options["debug"] = debug
        from gnomon.core import settings
        from gnomon.core.quiet import silence_libraries

        if debug or verbose:  # core modules and worker processes read it from the environment
            settings.turn_on("GNOMON_VERBOSE")

        silence_libraries([info.module for info in state.plugins().infos.values() if info.module])

    _install_core_commands(app)
    if with_plugins:
        plugins = state.plugins()
        commands, groups = len(app.registered_commands), len(app.registered_groups)
        plugins.add_commands(app)
        # plugins' commands get the CLI's error handling without importing the CLI
        _guard(app.registered_commands[commands:], app.registered_groups[groups:])
    return app


def _guard(commands, groups) -> None:
    """Wrap command callbacks (recursively through groups) with :func:`handle_errors`."""
    for info in commands:
        if info.callback is not None and not getattr(info.callback, "_gnomon_guarded", False):
            info.callback = handle_errors(info.callback)
    for group in groups:
        sub = group.typer_instance
        if sub is not None:
            _guard(sub.registered_commands, sub.registered_groups)


#: Core command modules in help order; any other module in ``cli/commands`` with an
#: ``install(app)`` function is installed after them, in name order.
CORE_COMMANDS = ("run_cmd", "tasks_cmd", "plugins_cmd")


def _install_core_commands(app: typer.Typer) -> None:
    import importlib
    import pkgutil

    from . import commands

    names = list(CORE_COMMANDS) + sorted(
        m.name for m in pkgutil.iter_modules(commands.__path__) if m.name not in CORE_COMMANDS
    )
    for name in names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        install = getattr(module, "install", None)
        if install is not None:
            install(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; :class:`GnomonError` becomes a one-line message and its exit code."""
    from gnomon.core import redact
    from gnomon.core.errors import GnomonError

    redact.install()  # no credential in log lines or uncaught tracebacks
    redact.wrap_std_streams()  # nor in what libraries print (MLflow's "View run at http://user:pw@...")
    try:
        app = build_app()
    except GnomonError as exc:  # strict plugin mode
        from .output import error

        error(str(exc))
        sys.exit(exc.exit_code)
    from gnomon.core.lifecycle import Terminated, die_of, install_signal_handlers

    install_signal_handlers()  # SIGTERM/SIGHUP end the run KILLED instead of leaving it RUNNING
    try:
        app(args=argv, prog_name="gnomon", standalone_mode=True)
    except SystemExit:
        raise
    except Terminated as exc:
        sys.stderr.write(f"gnomon: {exc}\n")
        sys.stderr.flush()
        die_of(exc.signum)


def handle_errors(fn):
    """Decorator for commands: GnomonError -> message + exit code; tracebacks with --debug."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from gnomon.core.engine import debug_enabled
        from gnomon.core.errors import GnomonError

        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, GnomonError):
                from gnomon.core.tracking import unreachable_error

                mapped = unreachable_error(exc)
                if mapped is None:
                    raise
                exc = mapped
            if state.options.get("debug") or debug_enabled():
                from gnomon.core.redact import format_exception

                sys.stderr.write(format_exception(exc))
            from .output import error

            error(str(exc))
            raise typer.Exit(exc.exit_code) from None

    wrapper._gnomon_guarded = True
    return wrapper


if __name__ == "__main__":  # pragma: no cover
    main()
