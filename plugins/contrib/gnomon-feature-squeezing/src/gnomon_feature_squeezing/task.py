"""The ``feature_squeezing`` task, shaped like gnomon's builtin image-preprocessing defense tasks.

Input: a folder (``data_dir``, default the MNIST testing split) or another run's dataset
artifact (``load_dataset_from_mlruns=true``, ``dataset_run_id``, ``dataset_tar_name``,
``dataset_name``). Output: the squeezed images as the artifact ``def_tar_name`` (folder
``def_data_dir``), the distance between input and output (``l2_mean``, ``l2_max``,
``linf_mean``, ``linf_max``) and, given a registered ``model``, the model's metrics on the
squeezed images (``accuracy``, ..., ``attack_success_rate`` for triggered data) and on the
input images (``undefended_*``).

Without ``model`` nothing imports TensorFlow: the task then only needs NumPy, Pillow, ART
and MLflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from marshmallow import ValidationError, fields, validate, validates_schema

from gnomon.core.fields import Bool, FileName, ModelRef, PositiveInt, RegistryName
from gnomon.core.schemas import DatasetSource, TaskSchema
from gnomon.core.tasks import Task

if TYPE_CHECKING:
    from gnomon.core.context import CheckContext

from .defense import MAX_BIT_DEPTH, MIN_BIT_DEPTH

NAME = "feature_squeezing"
#: What the task reads by default from another run (the poisoned test data of gen_poison_test_data).
DEFAULT_TAR, DEFAULT_NAME = "adversarial_poison.tar.gz", "adv_poison_data"


class FeatureSqueezingSchema(TaskSchema, DatasetSource("dataset_run_id", default_tar=DEFAULT_TAR,
                                                       default_name=DEFAULT_NAME)):
    """Parameters of ``feature_squeezing``."""

    model = ModelRef(load_default=None, allow_none=True, metadata={
        "description": "Registered model ('name' or 'name/version') to evaluate on the squeezed images; "
                       "empty: only write the squeezed dataset."})
    model_architecture = RegistryName("model", load_default=None, allow_none=True, metadata={
        "description": "Architecture 'model' was built with (any registered model); when given it must match "
                       "the architecture recorded on the model version."})
    batch_size = PositiveInt(load_default=32, metadata={"description": "Batch size for squeezing and evaluation."})
    feature_squeezing_bit_depth = fields.Integer(
        load_default=4, strict=False, validate=validate.Range(MIN_BIT_DEPTH, MAX_BIT_DEPTH), metadata={
        "description": f"Bits kept per value, {MIN_BIT_DEPTH} to {MAX_BIT_DEPTH} (8 leaves 8-bit images unchanged)."})
    feature_squeezing_apply_fit = Bool(load_default=False, metadata={
        "description": "ART flag: squeeze training data when attached to an estimator."})
    feature_squeezing_apply_predict = Bool(load_default=True, metadata={
        "description": "ART flag: squeeze data at prediction time when attached to an estimator."})
    def_tar_name = FileName(tar=True, load_default="feature_squeezing_dataset.tar.gz", metadata={
        "description": "Tar artifact name of the squeezed dataset."})
    def_data_dir = FileName(load_default="adv_testing", metadata={
        "description": "Folder inside the tar holding the class folders of the squeezed dataset."})

    @validates_schema
    def _check_defense(self, data, **kwargs):
        if not data.get("feature_squeezing_apply_fit", False) and not data.get("feature_squeezing_apply_predict", True):
            raise ValidationError("feature_squeezing_apply_fit and feature_squeezing_apply_predict are both false, "
                                  "so the defense would never be applied", "feature_squeezing_apply_predict")


def check(ctx: CheckContext, params):
    """Dataset source and model exist; ``model_architecture`` matches the model's recorded one."""
    from gnomon.core.datasets import check_dataset_source

    problems = dict(check_dataset_source(ctx))
    if params.get("model"):
        from gnomon.core.models import check_model

        problems.update(check_model(ctx, params))
    elif params.get("model_architecture"):
        problems["model_architecture"] = "only meaningful with 'model'"
    return problems


def squeeze(ctx, x, *, bit_depth, apply_fit, apply_predict, batch_size):
    """Squeeze ``x`` (NHWC float32 in [0, 1]) in batches with the registered ``feature_squeezing`` defense."""
    import numpy as np

    defense = ctx.registry.get("defense", NAME).factory(
        bit_depth, apply_fit=apply_fit, apply_predict=apply_predict, clip_values=(0.0, 1.0))
    out = np.empty_like(x, dtype=np.float32)
    with ctx.progress(f"feature squeezing ({bit_depth} bits)", total=len(x)) as advance:
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            out[start:start + len(batch)] = defense(batch)[0]
            advance(len(batch))
    return out


def run(ctx, *, feature_squeezing_bit_depth, feature_squeezing_apply_fit, feature_squeezing_apply_predict,
        model, model_architecture, batch_size, def_tar_name, def_data_dir, **_source):
    """Squeeze the dataset, log distances, write the artifact, evaluate ``model`` if given."""
    from gnomon.core.datasets import resolve_dataset, write_dataset_artifact
    from gnomon.core.perturbation import distance_metrics

    data = resolve_dataset(ctx)
    options = {"bit_depth": feature_squeezing_bit_depth, "apply_fit": feature_squeezing_apply_fit,
               "apply_predict": feature_squeezing_apply_predict}
    x_def = squeeze(ctx, data.x, batch_size=batch_size, **options)
    metadata = dict(data.metadata)
    metadata["defense"] = NAME
    metadata["defenses"] = [*(metadata.get("defenses") or []),
                             {"name": NAME, "art_class": "FeatureSqueezing", "run_id": ctx.run_id, "options": options}]
    defended = write_dataset_artifact(ctx, data.replace(x=x_def, metadata=metadata), def_tar_name, def_data_dir)
    ctx.log_metrics(distance_metrics(data.quantized().x, defended.x))
    ctx.log_metric("n_defended", len(defended))
    if model:
        from gnomon.core.models import evaluate, load_registered_model

        keras_model = load_registered_model(ctx, model)
        ctx.log_metrics(evaluate(keras_model, defended, batch_size))
        undefended = evaluate(keras_model, data.quantized(), batch_size)
        ctx.log_metrics({f"undefended_{k}": v for k, v in undefended.items()})
    ctx.info(f"{NAME}: {len(defended)} images at {feature_squeezing_bit_depth} bits -> artifact {def_tar_name} "
             f"(folder {def_data_dir})")
    return {"dataset_run_id": ctx.run_id, "dataset_tar_name": def_tar_name, "dataset_name": def_data_dir}


TASK = Task(
    name=NAME,
    summary="Feature squeezing defense: reduce bit depth of a dataset, write it as an artifact, evaluate a model.",
    schema=FeatureSqueezingSchema,
    fn=run,
    category="defense",
    check=check,
    description=("Applies ART FeatureSqueezing (bit-depth reduction) to every image of the input dataset and "
                 "logs the result as a dataset artifact other tasks can read with load_dataset_from_mlruns=true."),
)
