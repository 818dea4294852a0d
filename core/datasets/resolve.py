"""Turning a task's ``DatasetSource(...)`` parameters into an :class:`ImageDataset`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .dataset import ImageDataset
from .errors import DatasetError

if TYPE_CHECKING:
    from ..context import TaskContext

RUN_ID_FIELDS = ("run_id", "training_dataset_run_id", "dataset_run_id")


def _guess_run_id_field(params: dict[str, Any]) -> str:
    present = [f for f in RUN_ID_FIELDS if f in params]
    if len(present) == 1:
        return present[0]
    raise DatasetError(f"resolve_dataset needs run_id_field= (params hold {present or 'no run id field'})")


def source_settings(ctx: TaskContext, params: dict[str, Any] | None, run_id_field: str | None,
              data_dir_field: str | None, default_split: str | None) -> tuple[dict[str, Any], str | None, str, str]:
    """``(params, run_id_field, data_dir_field, default_split)``: the task's own (``ctx.params`` and its
    schema's ``DatasetSource`` settings) when ``params`` is None; given values always win."""
    own = ctx.dataset_source() if params is None else {}
    return (ctx.params if params is None else params,
            run_id_field or own.get("run_id_field"),
            data_dir_field or own.get("data_dir_field") or "data_dir",
            default_split or own.get("default_split") or "testing")


def resolve_dataset(ctx: TaskContext, params: dict[str, Any] | None = None, *, run_id_field: str | None = None,
                    data_dir_field: str | None = None, default_split: str | None = None,
                    image_size: Any = None, color_mode: str | None = None) -> ImageDataset:
    """The dataset a task's parameters name.

    ``resolve_dataset(ctx)`` reads the task's own dataset: ``ctx.params`` with the settings of
    the task schema's ``DatasetSource(...)``. With explicit ``params``, give the settings that
    differ from ``data_dir`` / ``testing`` (the run id field is guessed when unambiguous).

    With ``load_dataset_from_mlruns`` true: the artifact ``dataset_tar_name`` / folder
    ``dataset_name`` of run ``params[run_id_field]``. Otherwise the folder
    ``params[data_dir_field]``, or when that is empty the prepared MNIST ``default_split``
    (see :func:`mnist_dir`). Progress bars are ``ctx``'s. ``image_size`` / ``color_mode`` as
    in :func:`load_image_folder`.
    """
    from .artifacts import read_dataset_artifact
    from .folder import load_image_folder
    from .mnist import mnist_dir

    params, run_id_field, data_dir_field, default_split = source_settings(ctx, params, run_id_field, data_dir_field,
                                                                    default_split)
    progress = ctx if ctx.show_progress else False
    if params.get("load_dataset_from_mlruns"):
        field = run_id_field or _guess_run_id_field(params)
        run_id = params.get(field)
        if not run_id:
            raise DatasetError(f"{field} is required when load_dataset_from_mlruns is true")
        return read_dataset_artifact(ctx, str(run_id), params.get("dataset_tar_name") or "",
                                     params.get("dataset_name") or "", image_size=image_size,
                                     color_mode=color_mode, progress=progress)
    folder = params.get(data_dir_field)
    if folder:
        path = Path(str(folder)).expanduser()
        if not path.is_dir():
            raise DatasetError(f"{data_dir_field} '{folder}' is not a folder (expected <folder>/<class>/<images>)")
    else:
        path = mnist_dir(default_split, progress=progress)
    return load_image_folder(path, image_size=image_size, color_mode=color_mode, progress=progress)


def check_dataset_source(ctx: TaskContext, params: dict[str, Any] | None = None, *,
                         run_id_field: str | None = None, data_dir_field: str | None = None) -> dict[str, str]:
    """Problems with a task's dataset parameters, for a task's ``check`` (nothing is downloaded).

    ``check_dataset_source(ctx)`` checks the task's own dataset (settings from its schema, as
    :func:`resolve_dataset`). Returns ``{field: message}``: a missing run or tar artifact when
    reading from MLflow, a ``data_dir`` that is not a folder otherwise. Empty when all is well.
    """
    params, run_id_field, data_dir_field, _ = source_settings(ctx, params, run_id_field, data_dir_field, None)
    if params.get("load_dataset_from_mlruns"):
        from .artifacts import check_artifact

        field = run_id_field or _guess_run_id_field(params)
        run_id = params.get(field)
        if not run_id:
            return {field: "required when load_dataset_from_mlruns is true"}
        problem = check_artifact(ctx, str(run_id), str(params.get("dataset_tar_name") or ""))
        if problem:
            key = "dataset_tar_name" if problem.startswith(f"run '{run_id}' has no artifact") else field
            return {key: problem}
        return {}
    folder = params.get(data_dir_field)
    if folder and not Path(str(folder)).expanduser().is_dir():
        return {data_dir_field: f"'{folder}' is not a folder (expected <folder>/<class>/<images>)"}
    return {}
