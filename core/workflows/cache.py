"""The resume cache: a step is skipped when a finished run has the same task, params and input runs.

The key is a sha256 over the task name, the step's validated parameters (references
resolved) and the run ids of the earlier steps it uses. It is stored as the tag
``gnomon.cache_key`` on the step's run and looked up in the experiment, so a changed
parameter, or an upstream step that re-ran (new run id), makes the step run again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

CACHE_TAG = "gnomon.cache_key"
OUTPUT_TAG_PREFIX = "gnomon.output."


def cache_key(task: str, params: dict[str, Any], input_run_ids: dict[str, str]) -> str:
    """Hex sha256 of the task, its resolved parameters and the input steps' run ids."""
    payload = {
        "task": task,
        "params": {k: _canonical(v) for k, v in sorted(params.items())},
        "inputs": dict(sorted(input_run_ids.items())),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 3.0 and 3 are the same parameter value
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    return value


def find_cached_run(client, experiment_id: str, key: str):
    """The newest FINISHED run in the experiment tagged with ``key``, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CACHE_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def outputs_from_tags(tags: dict[str, str]) -> dict[str, Any]:
    """A run's outputs, as recorded by ``ctx.output`` in ``gnomon.output.*`` tags.

    Numbers come back as numbers; everything else as the recorded text.
    """
    out: dict[str, Any] = {}
    for key, value in tags.items():
        if key.startswith(OUTPUT_TAG_PREFIX):
            out[key[len(OUTPUT_TAG_PREFIX):]] = _parse(value)
    return out


def _parse(text: str) -> Any:
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return text
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else text


def tag_name(step_name: str) -> str:
    """``step_name`` as MLflow allows in a tag key: ``defend[defense=x,data=clean]`` -> ``defend/defense:x/data:clean``."""
    import re

    text = step_name.replace("[", "/").replace("]", "").replace(",", "/").replace("=", ":")
    return re.sub(r"[^\w./\- :]", "_", text)
