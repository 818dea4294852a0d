"""gnomon plugin: the ``fgm`` evasion attack (ART ``FastGradientMethod``), as Dioptra's ``fgm`` entry point.

The task attacks a registered model on a dataset (a folder or another run's dataset artifact),
writes the adversarial examples as a dataset artifact that ``infer`` and the defense tasks read
with ``load_dataset_from_mlruns=true``, and logs the perturbation distances and the model's
accuracy on the clean and on the adversarial images.

Nothing heavy is imported here: TensorFlow and ART are imported inside the task.
"""

from __future__ import annotations

from gnomon.core.hookspecs import hookimpl

#: The gnomon hook API major version this plugin was written for.
GNOMON_HOOK_API = "1"


@hookimpl
def register_tasks(register):
    """The ``fgm`` task."""
    from .task import TASK

    register(TASK)
