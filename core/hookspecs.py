"""Hook specifications: the whole contract between gnomon and its plugins.

Every hook receives a ``register`` callable (or the typer app, for commands), in the
style of simonw/llm: the core owns naming rules and records which plugin provided what.
A plugin implements any subset of these hooks with ``@gnomon.core.hookimpl``.

The docstrings below are the hook reference (``docs/hooks.md`` is generated from them).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("gnomon")
hookimpl = pluggy.HookimplMarker("gnomon")


@hookspec
def register_tasks(register):
    """Register runnable tasks (Dioptra's MLflow entry points).

    Call ``register(task)`` once per task, where ``task`` is a
    :class:`gnomon.core.tasks.Task`: a unique name (lower_snake_case), a one-line
    summary, a marshmallow schema describing every parameter (type, default, range,
    help text in ``metadata={"description": ...}``) and the function that does the
    work, ``fn(ctx, **params)``. ``ctx`` is a :class:`gnomon.core.context.RunContext`.

    Tasks must not import heavy libraries (tensorflow, art, mlflow) at module import
    time: import them inside ``fn``. Two plugins registering the same name is an
    error that names both plugins.

    Example::

        @hookimpl
        def register_tasks(register):
            register(Task(name="fgm", summary="FGM evasion attack",
                          schema=FgmSchema, fn=run_fgm))
    """


@hookspec
def register_models(register):
    """Register model architectures.

    Call ``register(spec)`` with a :class:`gnomon.core.registry.ModelSpec`: a name,
    a summary and ``build(input_shape, n_classes)`` returning an *uncompiled* Keras
    model that accepts ``input_shape`` (height, width, channels) images scaled to
    [0, 1]. Every task's ``model_architecture`` parameter accepts every registered
    name, so a plugin that adds a model is accepted by ``train``, the attacks and
    the defenses alike.
    """


@hookspec
def register_attacks(register):
    """Register attack components, such as backdoor triggers.

    Call ``register(spec)`` with a :class:`gnomon.core.registry.AttackSpec`: a name,
    a kind (``"trigger"`` for backdoor triggers) a summary and ``factory(**options)``
    that returns the component (for triggers, a function ``x -> x_triggered`` on a
    batch of images in NHWC layout with values in [0, 1]). Tasks that accept a
    ``trigger`` parameter accept every registered trigger.
    """


@hookspec
def register_defenses(register):
    """Register defense components, such as preprocessing defenses.

    Call ``register(spec)`` with a :class:`gnomon.core.registry.DefenseSpec`: a name,
    a kind (``"preprocessor"``), a summary and ``factory(**options)`` returning the
    defense object (for preprocessors, an ART-compatible preprocessor with
    ``__call__(x, y)``).
    """


@hookspec
def register_workflows(register):
    """Register workflow files (named, declarative chains of tasks).

    Call ``register(name, path)`` with a workflow name and the path of its TOML file.
    ``gnomon workflow list`` shows them and ``gnomon workflow run NAME`` runs them.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``gnomon`` command line.

    ``cli`` is the root :class:`typer.Typer` application. Add a command with
    ``@cli.command()`` or a group with ``cli.add_typer(sub_app, name="...")``.
    Keep command modules light: import heavy libraries inside the command function,
    so that ``gnomon --help`` stays fast.
    """


@hookspec
def before_run(ctx):
    """Called when a task run starts, before the task's function.

    ``ctx`` is the run's :class:`gnomon.core.context.RunContext`: the MLflow run exists and is
    active (``ctx.run_id``), the parameters are validated (``ctx.params``) and seeded. A hook may
    log to the run (``ctx.set_tag``, ``ctx.log_metric``), record something elsewhere, or refuse
    the run by policy by raising (e.g. :class:`gnomon.core.errors.GnomonError` with the reason).

    Order: every plugin's ``before_run`` runs in pluggy's call order (the last loaded plugin first:
    plugin directories, then entry points, then builtins; ``tryfirst``/``trylast`` move one).

    Errors: the first hook that raises stops the run. The task does not run, the run ends
    ``FAILED`` with the error (tag ``gnomon.error`` names the plugin), the remaining ``before_run``
    hooks are skipped, and every ``after_run`` hook still sees the failure.

    Example::

        @hookimpl
        def before_run(ctx):
            if ctx.task == "train" and ctx.params["epochs"] > 100:
                raise GnomonError("policy: at most 100 epochs")
    """


@hookspec
def after_run(ctx, result):
    """Called once for every task run that started, whatever its outcome.

    ``result`` is a :class:`gnomon.core.engine.RunResult` whose ``status`` is what the run ends
    as: ``"FINISHED"``, ``"FAILED"`` (``result.error`` holds the error text: the task's exception
    or a ``before_run`` hook's) or ``"KILLED"`` (interrupted). ``result.metrics`` and
    ``result.outputs`` hold what the task logged. The MLflow run is still active, so a hook may
    add metrics or tags to it; ``ctx.workdir`` still exists.

    Order: the same as ``before_run`` (the last loaded plugin first).

    Errors: a hook that raises does not change the run's status or result, and the other
    ``after_run`` hooks still run. The error is reported once on stderr and recorded as the run
    tag ``gnomon.hook_error.<plugin>``; with ``GNOMON_STRICT_PLUGINS=1`` it is raised instead
    (after every hook ran and the run ended).

    Example::

        @hookimpl
        def after_run(ctx, result):
            notify(f"{result.task} {result.status} in {result.duration_s:.0f} s")
    """
