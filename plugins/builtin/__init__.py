"""gnomon's builtin plugin: the Dioptra backdoor-poisoning tasks, models, triggers and defenses.

It is loaded through exactly the same hooks as a third-party plugin. Each part lives
in its own module and exposes plain ``register_*`` functions; the hook implementations
below only fan out to them. Parts must stay light at import time (no tensorflow, art
or mlflow imports outside functions).
"""

from __future__ import annotations

import importlib

from gnomon.core.hookspecs import hookimpl

GNOMON_HOOK_API = "1"

#: The builtin plugin's parts, in registration order.
PARTS = (
    "utility_tasks",
    "models",
    "training_tasks",
    "triggers",
    "literature_triggers",
    "attack_tasks",
    "defenses",
    "defense_tasks",
    "detection_tasks",
    "workflows",
    "commands",
)


#: Parts that add CLI commands; only these are imported to build the command line, so that
#: ``gnomon --help`` does not pay for importing every task module.
COMMAND_PARTS = ("commands",)


def _parts(names=PARTS):
    for name in names:
        yield importlib.import_module(f"{__name__}.{name}")


def _fan_out(hook: str, **kwargs) -> None:
    for part in _parts(COMMAND_PARTS if hook == "register_commands" else PARTS):
        fn = getattr(part, hook, None)
        if fn is not None:
            fn(**kwargs)


@hookimpl
def register_tasks(register):
    _fan_out("register_tasks", register=register)


@hookimpl
def register_models(register):
    _fan_out("register_models", register=register)


@hookimpl
def register_attacks(register):
    _fan_out("register_attacks", register=register)


@hookimpl
def register_defenses(register):
    _fan_out("register_defenses", register=register)


@hookimpl
def register_workflows(register):
    _fan_out("register_workflows", register=register)


@hookimpl
def register_commands(cli):
    _fan_out("register_commands", cli=cli)
