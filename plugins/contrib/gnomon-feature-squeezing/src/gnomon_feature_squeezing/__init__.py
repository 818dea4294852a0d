"""gnomon plugin: feature squeezing (ART ``FeatureSqueezing``) and an ``mlp`` model architecture.

Registers, through the ordinary hooks:

* the defense ``feature_squeezing`` (``DefenseSpec``, kind ``preprocessor``);
* the task ``feature_squeezing``: squeeze a dataset's colour depth, write it as a dataset
  artifact and, given a registered ``model``, evaluate it (accuracy, attack success rate);
* the model architecture ``mlp``, which every task's ``model_architecture`` then accepts.

Nothing heavy is imported here: ART and Keras are imported inside the functions that use them.
"""

from __future__ import annotations

from gnomon.core.hookspecs import hookimpl

#: The gnomon hook API major version this plugin was written for.
GNOMON_HOOK_API = "1"


@hookimpl
def register_defenses(register):
    """The ``feature_squeezing`` preprocessor."""
    from .defense import DEFENSE

    register(DEFENSE)


@hookimpl
def register_tasks(register):
    """The ``feature_squeezing`` task."""
    from .task import TASK

    register(TASK)


@hookimpl
def register_models(register):
    """The ``mlp`` architecture."""
    from .models import MLP

    register(MLP)
