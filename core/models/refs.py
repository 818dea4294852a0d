"""Registered-model references (``name`` or ``name/version``): naming, parsing, resolving, checking."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..context import Services

from .names import TAG_ARCHITECTURE, TAG_CLASS_NAMES, ModelNotFoundError


def registered_model_name(experiment: str, architecture: str, model_tag: str | None = "") -> str:
    """``{experiment}_{model_tag}_{architecture}``, or ``{experiment}_{architecture}`` without a tag."""
    return f"{experiment}_{model_tag}_{architecture}" if model_tag else f"{experiment}_{architecture}"


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """``"name"`` -> ``(name, None)``; ``"name/3"`` -> ``(name, "3")``; ``"name/latest"`` -> ``(name, None)``."""
    ref = (ref or "").strip()
    if not ref:
        raise ModelNotFoundError("no model given: expected 'name' or 'name/version'")
    name, _, version = ref.partition("/")
    if version in ("", "latest"):
        return name, None
    if not version.isdigit():
        raise ModelNotFoundError(f"model '{ref}': version must be a number, got '{version}'")
    return name, version


def resolve_model_ref(services: Services, ref: str) -> tuple[str, str]:
    """``(name, version)`` of an existing registered model version; raises :class:`ModelNotFoundError`."""
    from mlflow.exceptions import MlflowException

    name, version = parse_model_ref(ref)
    client = services.mlflow_client()
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:  # pragma: no cover - store errors
        raise ModelNotFoundError(f"model '{name}': cannot query the registry: {exc}") from None
    numbers = sorted(int(v.version) for v in versions)
    if not numbers:
        known = sorted(m.name for m in client.search_registered_models())
        hint = f" Registered models: {', '.join(known)}." if known else " No model is registered yet (train with -P register_model=true)."
        raise ModelNotFoundError(f"no registered model named '{name}' in {services.tracking_uri}.{hint}")
    if version is None:
        return name, str(numbers[-1])
    if int(version) not in numbers:
        raise ModelNotFoundError(f"model '{name}' has no version {version}; versions: "
                                 f"{', '.join(map(str, numbers))}")
    return name, version


def check_model_ref(services: Services, ref: str | None) -> str | None:
    """For a task's ``check``: ``None`` if ``ref`` names an existing model version, else the message."""
    if not ref:
        return None
    try:
        resolve_model_ref(services, ref)
    except ModelNotFoundError as exc:
        return str(exc)
    return None


def model_version_tags(services: Services, ref: str) -> dict[str, str]:
    """The tags of a registered model version (architecture, class names, input shape...)."""
    name, version = resolve_model_ref(services, ref)
    mv = services.mlflow_client().get_model_version(name, version)
    return dict(mv.tags or {})


def check_model(services: Services, params: dict, *, model_field: str = "model",
                architecture_field: str | None = "model_architecture",
                target_class_field: str | None = None) -> dict[str, str]:
    """For a task's ``check``: the one test that a model reference exists and fits the other params.

    Returns ``{field: message}`` problems (empty when all is well):

    - ``model_field``: the referenced registered model version does not exist (nothing else is
      checked then); an empty reference is left to the schema;
    - ``architecture_field`` (skip with ``None``): the version was registered with a different
      ``gnomon.model_architecture`` tag than the parameter names;
    - ``target_class_field`` (optional): the class index is not below the model's class count.
    """
    import json

    ref = params.get(model_field)
    if not ref:
        return {}
    problem = check_model_ref(services, ref)
    if problem:
        return {model_field: problem}
    problems: dict[str, str] = {}
    tags = model_version_tags(services, ref)
    wanted = params.get(architecture_field) if architecture_field else None
    recorded = tags.get(TAG_ARCHITECTURE)
    if wanted and recorded and recorded != wanted:
        problems[architecture_field] = f"model '{ref}' was built as '{recorded}', not '{wanted}'"
    target = params.get(target_class_field) if target_class_field else None
    if target is not None and tags.get(TAG_CLASS_NAMES):
        n_classes = len(json.loads(tags[TAG_CLASS_NAMES]))
        if int(target) >= n_classes:
            problems[target_class_field] = f"must be below {n_classes}: model '{ref}' has {n_classes} classes"
    return problems


def recorded_architecture(services: Services, ref: str) -> str | None:
    """The architecture a registered model version was built as (its ``gnomon.model_architecture`` tag)."""
    return (model_version_tags(services, ref) or {}).get(TAG_ARCHITECTURE)
