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
                  default_split: str = "testing", default_tar: str | None = None,
                  default_name: str | None = None) -> type[Schema]:
    """A schema mixin for reading a dataset from a folder or from another run's artifact.

    ``data_dir_field`` (default: the prepared MNIST ``default_split``), or, with
    ``load_dataset_from_mlruns=true``, the tar artifact ``dataset_tar_name`` holding the
    folder ``dataset_name`` from run ``run_id_field``. The plugin names the artifact its task
    reads by default (``default_tar``/``default_name``); without one, both are required
    whenever ``load_dataset_from_mlruns`` is true.
    """
    attrs = {
        data_dir_field: fields.String(load_default=None, allow_none=True, metadata={
            "description": f"Folder of class subfolders of images. Default: MNIST '{default_split}' "
                           "(prepared by 'gnomon data mnist' from GNOMON_MNIST_SOURCE)."}),
        "load_dataset_from_mlruns": Bool(load_default=False, metadata={
            "description": f"Read the dataset from the artifact of run '{run_id_field}' instead of a folder."}),
        run_id_field: fields.String(load_default=None, allow_none=True, metadata={
            "description": "MLflow run id holding the dataset artifact (with load_dataset_from_mlruns)."}),
        "dataset_tar_name": FileName(tar=True, load_default=default_tar, allow_none=default_tar is None, metadata={
            "description": "Tar artifact name of the dataset."}),
        "dataset_name": FileName(load_default=default_name, allow_none=default_name is None, metadata={
            "description": "Folder inside the tar holding the class folders."}),
    }

    def _check_source(self, data, **kwargs):
        if not data.get("load_dataset_from_mlruns"):
            return
        missing = {f: "required when load_dataset_from_mlruns is true"
                   for f in (run_id_field, "dataset_tar_name", "dataset_name") if not data.get(f)}
        if missing:
            raise ValidationError(missing)

    attrs["_check_dataset_source"] = validates_schema(_check_source)
    attrs["__dataset_source__"] = {"run_id_field": run_id_field, "data_dir_field": data_dir_field,
                                   "default_split": default_split}
    return type(f"DatasetSource_{run_id_field}", (Schema,), attrs)


def ModelArchitecture(default: str | None = None) -> type[Schema]:
    """A schema mixin for ``model_architecture``: one of the registered models (from any plugin).

    ``default`` is the plugin's choice of architecture; without one the parameter is required.
    """
    kwargs: dict = {"load_default": default} if default is not None else {"required": True}
    field = RegistryName("model", metadata={
        "description": "Model architecture: any registered model (see 'gnomon models list')."}, **kwargs)
    return type(f"ModelArchitecture_{default or 'required'}", (Schema,), {"model_architecture": field})


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
