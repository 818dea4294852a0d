"""A real sweep on the shipped MNIST sample (slow): 2 poison fractions x 2 triggers x 2 seeds through the
CLI, real TensorFlow/ART tasks and the embedded MLflow store; the leaderboard with means and intervals,
and the deduplication counted in MLflow."""

from __future__ import annotations

import csv
import json

import pytest

SMALL = '''
[workflow]
name = "small_sweep"
description = "A backdoor, one defense, on the MNIST sample."

[vars]
epochs = 0.5
poison_fraction = 0.3
trigger = "pattern"
seed = 0

[steps.poison]
task = "gen_poison_test_data"
matrix = { split = ["test", "train"] }
params = { label_type = "${matrix.split}", target_class = 1, trigger = "${vars.trigger}", seed = "${vars.seed}" }
when = [
  { match = { split = "test" }, params = { poison_fraction = 1.0, output_tar_name = "t.tar", output_dataset_name = "triggered" } },
  { match = { split = "train" }, params = { poison_fraction = "${vars.poison_fraction}", output_tar_name = "p.tar", output_dataset_name = "poisoned" } },
]

[steps.train]
task = "train"
matrix = { model = ["clean", "poisoned"] }
params = { model_tag = "${matrix.model}", epochs = "${vars.epochs}", batch_size = 32, register_model = true, seed = "${vars.seed}" }
when = [{ match = { model = "poisoned" }, params = { load_dataset_from_mlruns = true, training_dataset_run_id = "${steps.poison[split=train].run_id}", dataset_tar_name = "${steps.poison[split=train].outputs.dataset_tar_name}", dataset_name = "${steps.poison[split=train].outputs.dataset_name}" } }]

[steps.infer]
task = "infer"
matrix = { model = ["clean", "poisoned"], data = ["clean", "triggered"] }
params = { model = "${steps.train.outputs.model_name}/${steps.train.outputs.model_version}", seed = "${vars.seed}" }
report = { model = "${matrix.model} model", data = "${matrix.data}" }
when = [{ match = { data = "triggered" }, params = { run_id = "${steps.poison[split=test].run_id}", dataset_tar_name = "${steps.poison[split=test].outputs.dataset_tar_name}", dataset_name = "${steps.poison[split=test].outputs.dataset_name}" } }]

[steps.defend]
task = "spatial_smoothing"
matrix = { data = ["triggered", "clean"] }
params = { model = "${steps.train[model=poisoned].outputs.model_name}/${steps.train[model=poisoned].outputs.model_version}", spatial_smoothing_window_size = 3, seed = "${vars.seed}" }
report = { model = "poisoned model", data = "${matrix.data}", defense = "spatial smoothing" }
when = [{ match = { data = "triggered" }, params = { load_dataset_from_mlruns = true, dataset_run_id = "${steps.poison[split=test].run_id}", dataset_tar_name = "${steps.poison[split=test].outputs.dataset_tar_name}", dataset_name = "${steps.poison[split=test].outputs.dataset_name}" } }]

[report]
model = "poisoned model"

[sweep]
poison_fraction = [0.2, 0.5]
trigger = ["pattern", "single_pixel"]
seed = [0, 1]
'''


@pytest.mark.slow
def test_a_2x2x2_seed_sweep_shares_steps_and_prints_a_leaderboard(gnomon_cli, tmp_path, gnomon_engine):
    def cli(*args):
        return gnomon_cli(*args, env={"COLUMNS": "240"})

    path = tmp_path / "small_sweep.toml"
    path.write_text(SMALL)
    result = cli("workflow", "run", str(path), "--report-dir", tmp_path / "board", "--no-progress",
                 "--experiment", "test")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "sweep small_sweep finished" in text and "8 combinations" in text
    assert "defense: none" in text and "defense: spatial smoothing" in text
    assert "CA " in text and "ASR " in text and "RA " in text and "DER " in text and " ± " in text

    engine = gnomon_engine
    client = engine.mlflow_client()
    exp = client.get_experiment_by_name(engine.experiment)

    def count(task, **params):
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`gnomon.task` = '{task}'")
        return sum(all(r.data.params.get(k) == v for k, v in params.items()) for r in runs)

    # per seed one clean model; per (fraction, trigger, seed) one poisoned model
    assert count("train", model_tag="clean") == 2
    assert count("train", model_tag="poisoned") == 8
    # the triggered test set depends on trigger and seed only; the training poisons on all three
    assert count("gen_poison_test_data", label_type="test") == 4
    assert count("gen_poison_test_data", label_type="train") == 8
    sweeps = client.search_runs([exp.experiment_id], filter_string="tags.`gnomon.sweep` = 'small_sweep'")
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    combos = client.search_runs([exp.experiment_id],
                                filter_string=f"tags.`gnomon.sweep.parent` = '{sweeps[0].info.run_id}'")
    assert len(combos) == 8 and {r.info.status for r in combos} == {"FINISHED"}

    board = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    assert board["variables"] == ["poison_fraction", "trigger"] and len(board["rows"]) == 4
    assert board["defenses"] == ["none", "spatial smoothing"]
    for row in board["rows"]:
        assert row["seeds"] == [0, 1]
        for defense, cell in row["cells"].items():
            for metric in ("CA", "ASR", "RA"):
                stat = cell[metric]
                assert stat["n"] == 2 and 0.0 <= stat["mean"] <= 1.0 and stat["ci95"] is not None
            assert (cell["DER"]["mean"] is None) == (defense == "none")
    with (tmp_path / "board" / "results.csv").open() as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 4 * 2 * 2  # rows x defenses x seeds
    assert set(records[0]) >= {"poison_fraction", "trigger", "seed", "defense", "CA", "ASR", "RA", "DER"}
    html = (tmp_path / "board" / "leaderboard.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # heatmap + metrics vs poison_fraction

    again = cli("report", sweeps[0].info.run_id, "--json", "--no-log", "-o", tmp_path / "again", "--experiment", "test")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["rows"] == board["rows"]
