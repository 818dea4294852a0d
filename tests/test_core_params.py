"""Parameter parsing, conversion and validation (all errors at once, field by field), JSON Schema export."""

from __future__ import annotations

import pytest
from marshmallow import fields, validate

from gnomon.core.errors import ParamValidationError
from gnomon.core.fields import Bool, Fraction, ModelRef, PositiveInt, RegistryName
from gnomon.core.params import json_schema, parse_cli_params, validate_params
from gnomon.core.registry import ModelSpec, Registry
from gnomon.core.schemas import DatasetSource, TaskSchema
from gnomon.core.tasks import Task


class DemoSchema(DatasetSource("dataset_run_id"), TaskSchema):
    epochs = fields.Float(load_default=1.0, validate=validate.Range(min=0, min_inclusive=False))
    fraction = Fraction(load_default=0.1, metadata={"description": "how much"})
    batch_size = PositiveInt(load_default=32)
    optimizer = fields.String(load_default="adam", validate=validate.OneOf(["adam", "sgd"]))
    register_model = Bool(load_default=False)
    model_architecture = RegistryName("model", load_default="le_net")
    model = ModelRef(load_default=None, allow_none=True)


DEMO = Task(name="demo", summary="demo task", schema=DemoSchema, fn=lambda ctx, **kw: None)


@pytest.fixture
def registry():
    r = Registry()
    for name in ("le_net", "plugin_net"):
        r.add("model", ModelSpec(name=name, summary=name, build=lambda s, n: None), "p")
    return r


def test_cli_strings_are_converted(registry):
    raw = parse_cli_params(["epochs=2.5", "fraction=0.25", "batch_size=64", "register_model=true",
                            "model_architecture=plugin_net", "seed=7", "model=m/3"])
    values = validate_params(DEMO, raw, registry)
    assert values["epochs"] == 2.5 and values["batch_size"] == 64 and values["seed"] == 7
    assert values["register_model"] is True and values["model_architecture"] == "plugin_net"
    assert values["model"] == "m/3"
    assert values["optimizer"] == "adam"  # default filled in


def test_python_values_are_accepted(registry):
    values = validate_params(DEMO, {"epochs": 3, "register_model": False}, registry)
    assert values["epochs"] == 3.0 and values["register_model"] is False


def test_every_error_is_reported_together(registry):
    raw = {"epochs": "-1", "fraction": "1.5", "batch_size": "0", "optimizer": "adamw",
           "model_architecture": "le_nett", "epohcs": "3", "model": "a/b/c", "register_model": "maybe"}
    with pytest.raises(ParamValidationError) as info:
        validate_params(DEMO, raw, registry)
    errors = info.value.errors
    assert set(errors) == {"epochs", "fraction", "batch_size", "optimizer", "model_architecture", "epohcs",
                           "model", "register_model"}
    assert "did you mean 'le_net'" in errors["model_architecture"][0].lower()
    assert "did you mean 'epochs'" in errors["epohcs"][0]
    assert info.value.exit_code == 2
    assert "fraction:" in str(info.value)


def test_dataset_source_requires_run_id_when_loading_from_mlruns(registry):
    with pytest.raises(ParamValidationError) as info:
        validate_params(DEMO, {"load_dataset_from_mlruns": "true"}, registry)
    assert "dataset_run_id" in info.value.errors


def test_registry_choices_follow_what_plugins_registered(registry):
    with pytest.raises(ParamValidationError):
        validate_params(DEMO, {"model_architecture": "plugin_net"}, Registry())
    assert validate_params(DEMO, {"model_architecture": "plugin_net"}, registry)["model_architecture"] == "plugin_net"


@pytest.mark.parametrize("bad", ["novalue", "=3"])
def test_malformed_cli_pairs(bad):
    with pytest.raises(ParamValidationError):
        parse_cli_params([bad])


def test_repeated_cli_param_is_an_error():
    with pytest.raises(ParamValidationError, match="more than once"):
        parse_cli_params(["a=1", "a=2"])


def test_value_may_contain_equals():
    assert parse_cli_params(["expr=a=b"]) == {"expr": "a=b"}


def test_json_schema_export(registry):
    schema = json_schema(DEMO, registry)
    props = schema["properties"]
    assert schema["additionalProperties"] is False
    assert props["fraction"] == {"type": "number", "description": "how much", "default": 0.1,
                                 "minimum": 0.0, "maximum": 1.0}
    assert props["epochs"]["exclusiveMinimum"] == 0
    assert props["batch_size"]["minimum"] == 1 and props["batch_size"]["type"] == "integer"
    assert props["optimizer"]["enum"] == ["adam", "sgd"]
    assert props["model_architecture"]["enum"] == ["le_net", "plugin_net"]
    assert props["register_model"]["type"] == "boolean"
    assert props["seed"]["default"] == 0


# -- issue 15 probes: values that used to pass validation and fail inside the run ------------------
class PlainIntSchema(TaskSchema):
    count = fields.Integer(load_default=0)                       # no range of its own
    index = fields.Integer(load_default=0, validate=validate.Range(min=0))


PLAIN = Task(name="plain", summary="", schema=PlainIntSchema, fn=lambda ctx, **kw: None)


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", "99999999999999999999999", "less than or equal to 2147483647"),
    ("batch_size", str(2**31), "less than or equal to 2147483647"),
    ("seed", "-1", "greater than or equal to 0"),
    ("seed", str(2**64), "less than or equal to 9223372036854775807"),
    ("model", "", "must not be empty"),
    ("model", "   ", "must not be empty"),
    ("dataset_tar_name", "../evil.tar", "plain file or folder name"),
    ("dataset_tar_name", "a/b.tar", "plain file or folder name"),
    ("dataset_tar_name", "..\\evil.tar", "plain file or folder name"),
    ("dataset_tar_name", "evil.zip", "must end with .tar"),
    ("dataset_name", "", "must not be empty"),
    ("dataset_name", "..", "plain file or folder name"),
    ("dataset_name", ".hidden", "plain file or folder name"),
])
def test_out_of_range_empty_and_path_values_are_refused(registry, field, value, message):
    with pytest.raises(ParamValidationError) as info:
        validate_params(DEMO, {field: value}, registry)
    assert list(info.value.errors) == [field] and message in info.value.errors[field][0]


def test_every_integer_field_is_held_to_int64():
    with pytest.raises(ParamValidationError) as info:
        validate_params(PLAIN, {"count": str(2**63), "index": str(-(2**63) - 1)})
    assert set(info.value.errors) == {"count", "index"}
    assert "out of range" in info.value.errors["count"][0]
    ok = validate_params(PLAIN, {"count": str(2**63 - 1), "index": "0"})
    assert ok["count"] == 2**63 - 1
    # the int64 guard is invisible in the JSON Schema of a bounded field, and ranges still show
    assert json_schema(DEMO)["properties"]["batch_size"]["maximum"] == 2**31 - 1


def test_largest_accepted_values_still_pass(registry):
    ok = validate_params(DEMO, {"batch_size": str(2**31 - 1), "seed": str(2**63 - 1), "model": "m/3",
                                "dataset_tar_name": "x.tar.gz", "dataset_name": "adv_testing"}, registry)
    assert ok["batch_size"] == 2**31 - 1 and ok["model"] == "m/3"


def test_malformed_cli_option_is_not_reported_under_a_task():
    with pytest.raises(ParamValidationError) as info:
        parse_cli_params(["epochs", "a=1", "a=2"])
    text = str(info.value)
    assert info.value.exit_code == 2
    assert "task" not in text and "malformed -P options" in text
    assert "-P epochs: expected name=value" in text and "'a' is given more than once" in text
