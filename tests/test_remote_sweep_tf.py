# ruff: noqa: F811  (pytest fixtures imported from other test modules are redefined as test arguments)
"""A TensorFlow sweep on RQ workers (slow): real train/infer/defense steps on the shipped MNIST sample.

The ``stack`` of test_remote_fanout (Redis, SeaweedFS behind a real ``mlflow server``, two
``gnomon worker`` processes with their own homes and caches). Models, poisoned datasets and
defended datasets pass between workers only through the tracking server and its S3 artifact
store. The leaderboard the last job builds must equal, figure for figure, the one the same sweep
gives in one local process for the same seed.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import mlflow_server, redis_server, s3_server  # noqa: E402,F401
from test_remote_fanout import MNIST_SAMPLE, _client, _flow, stack  # noqa: E402,F401
from test_remote_jobs import _cli, _env  # noqa: E402
from test_remote_sweep import submit_sweep  # noqa: E402
from test_workflows_sweep_real import SMALL  # noqa: E402

pytestmark = [pytest.mark.servers, pytest.mark.slow]

#: the real sweep of test_workflows_sweep_real without its [sweep] table, on a tenth of an epoch
FLOW = SMALL.split("[sweep]")[0]
AXES = ("--sweep", "poison_fraction=0.2,0.5", "-P", "epochs=0.1", "-P", "seed=3")


def test_a_tensorflow_sweep_on_workers_gives_the_local_leaderboard(stack, tmp_path):
    path = _flow(stack, FLOW, "tf_sweep")
    experiment = f"tfsweep-{uuid.uuid4().hex[:6]}"
    submitted = submit_sweep(stack, path, experiment, *AXES)
    sweep_id = submitted["run_id"]
    # 2 combinations x 10 steps; shared: the triggered test set, the clean model and its two inferences
    assert len(submitted["jobs"]) == 16
    status = _cli(["workflow", "status", sweep_id, "--wait", "--json"], stack["env"], timeout=900)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["state"] == "finished", info

    client = _client(stack)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    trainings = client.search_runs([exp_id], filter_string="tags.`gnomon.task` = 'train'")
    assert sorted(r.data.params["model_tag"] for r in trainings) == ["clean", "poisoned", "poisoned"]

    local_env = _env(stack["s3"], tmp_path / "local", PYTHONPATH=str(stack["root"] / "site"),
                     GNOMON_MNIST_SOURCE=MNIST_SAMPLE)
    local = _cli(["workflow", "run", str(path), *AXES, "--json", "--no-progress"], local_env, timeout=900)
    assert local.returncode == 0, local.stderr
    local_board = json.loads(local.stdout)["leaderboard"]
    report = _cli(["report", sweep_id, "--json", "--no-log", "-e", experiment, "--output", str(tmp_path / "board")],
                  stack["env"])
    assert report.returncode == 0, report.stderr
    remote_board = json.loads(report.stdout)
    assert remote_board["defenses"] == local_board["defenses"] == ["none", "spatial smoothing"]
    assert len(remote_board["rows"]) == 2
    assert remote_board["rows"] == local_board["rows"]
    poisoned = remote_board["rows"][-1]["cells"]["none"]
    assert poisoned["CA"]["mean"] > 0.1 and poisoned["ASR"]["n"] == 1  # a real model; one seed
