"""Reusable parameter groups for task schemas (seed, dataset source, model selection, training).

Plugin tasks should build their schemas from these so that parameters are named and
validated the same way everywhere, as in Dioptra's entry points.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from .fields import INT64_MAX, INT64_MIN, Bool, FileName, ModelRef, PositiveInt, RegistryName, check_int64


class TaskSchema(Schema):
    """Base for task schemas: unknown parameters are errors; every task takes ``seed``.

    Every integer field, whatever its own range, is also held to the int64 range NumPy and
    TensorFlow accept, so an absurd value is refused here rather than inside the run.
    """

    class Meta:
        unknown = RAISE
        ordered = True

    seed = fields.Integer(load_default=0, validate=validate.Range(min=0, max=INT64_MAX), metadata={
        "description": "Seed for every random choice (Python, NumPy, TensorFlow); same seed, same result."})

    def on_bind_field(self, field_name: str, field_obj: fields.Field) -> None:
        if isinstance(field_obj, fields.Integer) and check_int64 not in field_obj.validators and not any(
                isinstance(v, validate.Range) and v.min is not None and v.max is not None
                and INT64_MIN <= v.min and v.max <= INT64_MAX for v in field_obj.validators):
            field_obj.validators.append(check_int64)  # no bounded range of its own: hold it to int64


def DatasetSource(run_id_field: str = "dataset_run_id", *, data_dir_field: str = "data_dir",
                  default_split: str = "testing", default_tar: str = "testing_adversarial.tar",
                  default_name: str = "adv_testing") -> type[Schema]:
    """A schema mixin for reading a dataset from a folder or from another run's artifact.

    ``data_dir_field`` (default: the prepared MNIST ``default_split``), or, with
    ``load_dataset_from_mlruns=true``, the tar artifact ``dataset_tar_name`` holding the
    folder ``dataset_name`` from run ``run_id_field``.
    """
    attrs = {
        data_dir_field: fields.String(load_default=None, allow_none=True, metadata={
            "description": f"Folder of class subfolders of images. Default: MNIST '{default_split}' "
                           "(prepared by 'gnomon data mnist' from GNOMON_MNIST_SOURCE)."}),
        "load_dataset_from_mlruns": Bool(load_default=False, metadata={
            "description": f"Read the dataset from the artifact of run '{run_id_field}' instead of a folder."}),
        run_id_field: fields.String(load_default=None, allow_none=True, metadata={
            "description": "MLflow run id holding the dataset artifact (with load_dataset_from_mlruns)."}),
        "dataset_tar_name": FileName(tar=True, load_default=default_tar, metadata={
            "description": "Tar artifact name of the dataset."}),
        "dataset_name": FileName(load_default=default_name, metadata={
            "description": "Folder inside the tar holding the class folders."}),
    }

    def _check_source(self, data, **kwargs):
        if data.get("load_dataset_from_mlruns") and not data.get(run_id_field):
            raise ValidationError("required when load_dataset_from_mlruns is true", run_id_field)

    attrs["_check_dataset_source"] = validates_schema(_check_source)
    attrs["__dataset_source__"] = {"run_id_field": run_id_field, "data_dir_field": data_dir_field,
                                   "default_split": default_split}
    return type(f"DatasetSource_{run_id_field}", (Schema,), attrs)


class ModelArchitecture(Schema):
    """``model_architecture``: one of the registered models (builtin or from any plugin)."""

    model_architecture = RegistryName("model", load_default="le_net", metadata={
        "description": "Model architecture: any registered model (see 'gnomon models list')."})


class RegisteredModel(Schema):
    """``model``: a registered MLflow model as ``name`` or ``name/version``."""

    model = ModelRef(required=True, metadata={
        "description": "Registered model: 'name' (latest version) or 'name/version'."})


class BatchSize(Schema):
    batch_size = PositiveInt(load_default=32, metadata={"description": "Batch size."})


OPTIMIZERS = ("rmsprop", "adam", "adagrad", "sgd")


class Training(Schema):
    """The training parameters shared by ``train`` and ``gen_poison_model``."""

    model_tag = fields.String(load_default="", metadata={
        "description": "Tag in the registered model name: {EXPERIMENT}_{model_tag}_{model_architecture}."})
    epochs = fields.Float(load_default=30.0, validate=validate.Range(min=0.0, min_inclusive=False), metadata={
        "description": "Passes over the training data; fractional values train on part of the last epoch."})
    batch_size = PositiveInt(load_default=32, metadata={"description": "Batch size for training and testing."})
    register_model = Bool(load_default=False, metadata={
        "description": "Register the trained model in the MLflow model registry."})
    learning_rate = fields.Float(load_default=0.001, validate=validate.Range(min=0.0, min_inclusive=False),
                                 metadata={"description": "Initial learning rate."})
    optimizer = fields.String(load_default="adam", validate=validate.OneOf(OPTIMIZERS), metadata={
        "description": "Optimizer: " + ", ".join(OPTIMIZERS) + "."})
