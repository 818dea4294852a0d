"""gnomon's builtin plugins: the Dioptra backdoor-poisoning tasks, models, triggers and defenses.

This package is a *plugin package*: each module named in ``GNOMON_PLUGINS`` is its own
plugin (``builtin.models``, ``builtin.triggers``, ...), registered through exactly the same
hooks as a third-party plugin, listed on its own by ``gnomon plugins list`` and disabled on
its own with ``GNOMON_DISABLE_PLUGINS=builtin.triggers``. gnomon's core finds this package
only through the ``gnomon.builtin`` entry point in pyproject.toml.

The modules import each other relatively, never as ``gnomon.plugins.builtin``: on a worker the
synced copy is loaded as ``gnomon_dir_plugins.builtin`` and must not mix in the worker's
installed copy. Each stays light at import time (no tensorflow, art or mlflow outside functions).
"""

GNOMON_HOOK_API = "1"

#: The builtin plugins, in registration order (names live in the registry in this order).
GNOMON_PLUGINS = (
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
