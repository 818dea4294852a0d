"""One conversion to JSON-ready data, used by run results, workflow results and dataset metadata."""

from __future__ import annotations

import json

import numpy as np

from gnomon.core.jsonable import jsonable


def test_nested_numpy_and_odd_values_become_json():
    value = {1: (np.int64(3), np.float32(0.5)), "a": {"b": np.arange(3)}, "s": {2}, "p": object}
    out = jsonable(value)
    assert out == {"1": [3, 0.5], "a": {"b": [0, 1, 2]}, "s": [2], "p": str(object)}
    assert isinstance(out["1"][0], int)
    json.dumps(out)


def test_run_result_and_workflow_use_it():
    from gnomon.core.engine import RunResult

    result = RunResult(run_id="r", task="t", status="FINISHED", experiment_id="0",
                       params={"shape": (28, 28), "n": np.int64(2)}, outputs={"x": {"k": np.float64(1.5)}})
    assert json.loads(json.dumps(result.to_dict()))["params"] == {"shape": [28, 28], "n": 2}
    assert result.to_dict()["outputs"] == {"x": {"k": 1.5}}
