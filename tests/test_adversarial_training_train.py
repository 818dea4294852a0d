"""``train -P apply_defense=true`` runs fit_adversarial end to end (real Keras, real MLflow store)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_train_with_pgd_defense_logs_adversarial_history(gnomon_engine, mnist_sample_dirs):
    result = gnomon_engine.run("train", {
        "data_dir_train": str(mnist_sample_dirs["training"]), "data_dir_test": str(mnist_sample_dirs["testing"]),
        "model_architecture": "shallow_net", "epochs": 2, "batch_size": 64, "validation_split": 0.2,
        "register_model": True, "model_tag": "robust", "apply_defense": True,
        "pgd_eps": 0.1, "pgd_eps_step": 0.05, "pgd_max_iter": 2, "pgd_ratio": 1.0, "seed": 1,
    })
    assert result.status == "FINISHED" and result.outputs["model_name"] == "test_robust_shallow_net"
    client = gnomon_engine.mlflow_client()
    history = client.get_metric_history(result.run_id, "train_adversarial_loss")
    assert [m.step for m in history] == [1, 2]
    assert history[1].value < history[0].value
    assert client.get_metric_history(result.run_id, "val_accuracy")
    assert 0.0 < result.metrics["accuracy"] <= 1.0
