# ruff: noqa: F811  (pytest fixtures imported from servers.py are redefined as test arguments)
"""Dataset artifacts through real MLflow runs: exact round trip of quantize(x), provenance, clear errors."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from marshmallow import fields

from gnomon.core.datasets import (
    DatasetError,
    ImageDataset,
    UnsafeArchiveError,
    load_image_folder,
    quantize,
    read_dataset_artifact,
    resolve_dataset,
    write_dataset_artifact,
)
from gnomon.core.errors import ParamValidationError, TaskFailedError
from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import DatasetSource, TaskSchema
from gnomon.core.tasks import Task

sys.path.insert(0, str(Path(__file__).parent))
from servers import mlflow_server, s3_server  # noqa: E402,F401

PRODUCED: dict[str, ImageDataset] = {}


class ProduceSchema(TaskSchema, DatasetSource("dataset_run_id", default_split="testing")):
    noise = fields.Float(load_default=0.1)
    target_class = fields.Integer(load_default=3)


def produce(ctx, seed, noise, target_class, **params):
    """A stand-in attack: noisy copies (not on the 8-bit grid), a third of them 'triggered'."""
    source = resolve_dataset(ctx, params, run_id_field="dataset_run_id")
    x = np.clip(source.x + ctx.rng.normal(0, noise, source.x.shape).astype(np.float32), 0, 1)
    poisoned = np.flatnonzero(ctx.rng.random(len(x)) < 1 / 3)
    meta = dict(source.metadata, target_class=target_class, trigger="noise", poisoned_indices=poisoned.tolist())
    attacked = ImageDataset(x, source.y, source.class_names, meta, source.files)
    PRODUCED["in_memory"] = attacked
    PRODUCED["returned"] = write_dataset_artifact(ctx, attacked, "adv_testing.tar", "adv_data")
    return {"n": len(attacked)}


class ConsumeSchema(TaskSchema, DatasetSource("dataset_run_id", default_tar="adv_testing.tar", default_name="adv_data")):
    pass


def consume(ctx, seed, **params):
    ds = resolve_dataset(ctx, params, run_id_field="dataset_run_id")
    PRODUCED["consumed"] = ds
    ctx.log_metric("n_poisoned", int(ds.poisoned_mask().sum()))
    return {"n": len(ds)}


def _consume_check(engine, params):
    from gnomon.core.datasets import check_dataset_source

    return check_dataset_source(engine, params, run_id_field="dataset_run_id")


class _Plugin:
    @hookimpl
    def register_tasks(self, register):
        register(Task(name="test_produce", summary="write a dataset artifact", schema=ProduceSchema, fn=produce))
        register(Task(name="test_consume", summary="read a dataset artifact", schema=ConsumeSchema, fn=consume,
                      check=_consume_check))


@pytest.fixture
def engine(gnomon_engine_factory):
    PRODUCED.clear()
    return gnomon_engine_factory(plugins=[_Plugin()])


def test_round_trip_equals_quantized_in_memory(engine, mnist_sample_arrays):
    produced = engine.run("test_produce", {"seed": 5})
    original = PRODUCED["in_memory"]
    assert not np.array_equal(original.x, quantize(original.x))  # the test would prove nothing otherwise

    back = read_dataset_artifact(engine, produced.run_id, "adv_testing.tar", "adv_data")
    np.testing.assert_array_equal(back.x, quantize(original.x))  # bit for bit
    np.testing.assert_array_equal(back.y, original.y)
    assert back.class_names == original.class_names
    np.testing.assert_array_equal(back.poisoned_mask(), original.poisoned_mask())
    assert back.poisoned_mask().sum() > 50
    # what the producer got back is exactly what consumers see
    returned = PRODUCED["returned"]
    np.testing.assert_array_equal(returned.x, back.x)
    assert returned.files == back.files

    # an accuracy computed on either is therefore identical (nearest-class-mean classifier on the clean sample)
    x_train, y_train = mnist_sample_arrays["training"]
    means = np.stack([x_train[y_train == c].mean(0) / 255.0 for c in range(10)]).reshape(10, -1)
    def accuracy(ds):
        d = ((ds.x.reshape(len(ds), 1, -1) - means[None]) ** 2).sum(-1)
        return float((d.argmin(1) == ds.y).mean())
    assert accuracy(back) == accuracy(returned.replace(x=quantize(original.x)))

    meta = back.metadata
    assert meta["target_class"] == 3 and meta["trigger"] == "noise"
    assert meta["produced_by"]["task"] == "test_produce"
    assert meta["produced_by"]["run_id"] == produced.run_id
    assert meta["produced_by"]["params"]["noise"] == 0.1
    assert meta["artifact"] == {"run_id": produced.run_id, "tar_name": "adv_testing.tar", "dataset_name": "adv_data"}
    assert "mnist" in meta["source"]


def test_artifact_layout_and_chained_consumer(engine, tmp_path):
    produced = engine.run("test_produce", {"seed": 1})
    client = engine.mlflow_client()
    path = client.download_artifacts(produced.run_id, "adv_testing.tar", str(tmp_path))
    with tarfile.open(path) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("adv_data/gnomon-dataset.json"))
    assert "adv_data/gnomon-dataset.json" in names
    assert {f"adv_data/{c}" for c in "0123456789"} <= set(names)
    assert all(n.startswith("adv_data") for n in names)
    assert manifest["class_names"] == [str(i) for i in range(10)] and manifest["n_images"] == 300
    assert manifest["image_shape"] == [28, 28, 1] and manifest["pixel_format"] == "png-8bit"
    assert set(manifest["poisoned_files"]) <= set(manifest["files"])

    consumed = engine.run("test_consume", {"load_dataset_from_mlruns": "true", "dataset_run_id": produced.run_id})
    assert consumed.metrics["n_poisoned"] == len(manifest["poisoned_files"])
    np.testing.assert_array_equal(PRODUCED["consumed"].x, PRODUCED["returned"].x)

    # a producer reading an artifact keeps the lineage
    again = engine.run("test_produce", {"load_dataset_from_mlruns": True, "dataset_run_id": produced.run_id,
                                        "dataset_tar_name": "adv_testing.tar", "dataset_name": "adv_data"})
    meta = read_dataset_artifact(engine, again.run_id, "adv_testing.tar", "adv_data").metadata
    assert meta["produced_by"]["run_id"] == again.run_id
    assert meta["lineage"][0]["run_id"] == produced.run_id


def test_missing_run_tar_and_folder_are_clear(engine):
    produced = engine.run("test_produce", {"seed": 2})
    with pytest.raises(DatasetError, match="no MLflow run 'deadbeef'"):
        read_dataset_artifact(engine, "deadbeef", "adv_testing.tar", "adv_data")
    with pytest.raises(DatasetError, match=r"has no artifact 'other.tar' \(its tar artifacts: adv_testing.tar\)"):
        read_dataset_artifact(engine, produced.run_id, "other.tar", "adv_data")
    with pytest.raises(DatasetError, match=r"has no folder 'wrong' \(it holds: adv_data\)"):
        read_dataset_artifact(engine, produced.run_id, "adv_testing.tar", "wrong")
    with pytest.raises(DatasetError, match="dataset_name must be a plain"):
        read_dataset_artifact(engine, produced.run_id, "adv_testing.tar", "../x")
    # the task's check reports these before any run exists
    with pytest.raises(ParamValidationError, match="dataset_run_id: no MLflow run 'nope'"):
        engine.run("test_consume", {"load_dataset_from_mlruns": True, "dataset_run_id": "nope"})
    with pytest.raises(ParamValidationError, match="dataset_tar_name: run .* has no artifact 'x.tar'"):
        engine.run("test_consume", {"load_dataset_from_mlruns": True, "dataset_run_id": produced.run_id,
                                    "dataset_tar_name": "x.tar"})
    with pytest.raises(ParamValidationError, match="dataset_run_id"):
        engine.run("test_consume", {"load_dataset_from_mlruns": True})


def test_hostile_artifact_is_refused(engine, tmp_path):
    import mlflow

    engine.ensure_tracking()
    evil = tmp_path / "adv_testing.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("adv_data/../../../escaped.png")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with mlflow.start_run(experiment_id=engine.ensure_tracking()) as run:
        mlflow.log_artifact(str(evil))
    with pytest.raises(UnsafeArchiveError, match="member 'adv_data/../../../escaped.png' has '..'"):
        read_dataset_artifact(engine, run.info.run_id, "adv_testing.tar", "adv_data")
    with pytest.raises(TaskFailedError, match="has '..'"):
        engine.run("test_consume", {"load_dataset_from_mlruns": True, "dataset_run_id": run.info.run_id})


def test_folder_from_artifact_keeps_order_and_metadata(tmp_path, gnomon_home):
    """write_image_folder + load_image_folder: the manifest's order and class list win (even empty classes)."""
    from gnomon.core.datasets import write_image_folder

    rng = np.random.default_rng(0)
    ds = ImageDataset(rng.random((7, 5, 4, 3), dtype=np.float32), [2, 0, 2, 0, 2, 2, 0], ["a", "b", "c"],
                      {"target_class": 0, "poisoned_indices": [1, 6]})
    written = write_image_folder(ds, tmp_path / "out", progress=False)
    back = load_image_folder(tmp_path / "out", progress=False)
    assert back.class_names == ["a", "b", "c"] and back.files == written.files
    np.testing.assert_array_equal(back.x, quantize(ds.x))
    np.testing.assert_array_equal(back.y, ds.y)
    np.testing.assert_array_equal(back.poisoned_mask(), ds.poisoned_mask())
    assert back.metadata["target_class"] == 0


@pytest.mark.servers
@pytest.mark.slow
def test_round_trip_through_remote_tracking_server(gnomon_engine_factory, monkeypatch, mlflow_server):
    """A real ``mlflow server`` with proxied artifacts: write and read the artifact over HTTP.

    The session's shared server (artifacts proxied to SeaweedFS S3) is used; the client has no S3
    credentials, so the bytes can only have gone through the server.
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    PRODUCED.clear()
    engine = gnomon_engine_factory(plugins=[_Plugin()], experiment=f"datasets-{uuid.uuid4().hex[:8]}")
    assert engine.tracking_uri.startswith("http://")
    produced = engine.run("test_produce", {"seed": 3})
    back = read_dataset_artifact(engine, produced.run_id, "adv_testing.tar", "adv_data")
    np.testing.assert_array_equal(back.x, quantize(PRODUCED["in_memory"].x))
    s3 = mlflow_server.s3
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=mlflow_server.prefix + "/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert [k for k in keys if produced.run_id in k and k.endswith("/adv_testing.tar")], keys[-20:]


@pytest.mark.parametrize("suffix, channels", [(".tar", 3), (".tar.gz", 1)])
def test_dataset_tar_round_trip_without_mlflow(tmp_path, suffix, channels, gnomon_home):
    from gnomon.core.datasets.artifacts import load_dataset_tar, write_dataset_tar

    rng = np.random.default_rng(1)
    ds = ImageDataset(rng.random((9, 6, 5, channels), dtype=np.float32), [1, 1, 0, 2, 2, 2, 0, 1, 1],
                      ["x", "y", "z"], {"trigger": "t", "poisoned_indices": [0, 8]},
                      [f"c/{100 - i}.jpg" for i in range(9)])
    written = write_dataset_tar(ds, tmp_path / f"d{suffix}", "data", progress=False)
    assert written.files[0] == "y/100.png"
    back = load_dataset_tar(tmp_path / f"d{suffix}", "data", progress=False)
    np.testing.assert_array_equal(back.x, quantize(ds.x))
    np.testing.assert_array_equal(back.y, ds.y)
    assert back.files == written.files and back.metadata["trigger"] == "t"
    np.testing.assert_array_equal(back.poisoned_mask(), ds.poisoned_mask())
    resized = load_dataset_tar(tmp_path / f"d{suffix}", "data", image_size=(3, 3), color_mode="rgb", progress=False)
    assert resized.x.shape == (9, 3, 3, 3)
    with pytest.raises(DatasetError, match=r"has no folder 'nope' \(it holds: data\)"):
        load_dataset_tar(tmp_path / f"d{suffix}", "nope")


def test_finished_runs_artifacts_are_read_once_per_process(engine, monkeypatch):
    """A workflow's steps reading the same artifact decode it once; callers get independent copies."""
    from gnomon.core.datasets import artifacts

    produced = engine.run("test_produce", {"seed": 2})
    engine.store.datasets.clear()  # forget what the producer left (see the next test)
    calls = []
    real = artifacts.load_dataset_tar
    monkeypatch.setattr(artifacts, "load_dataset_tar", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = read_dataset_artifact(engine, produced.run_id, "adv_testing.tar", "adv_data")
    first.x[:] = 0  # a caller scribbling on its copy must not change what the next caller gets
    first.metadata["target_class"] = 99
    second = read_dataset_artifact(engine, produced.run_id, "adv_testing.tar", "adv_data")
    assert len(calls) == 1
    assert second.x.max() > 0 and second.metadata["target_class"] == 3
    monkeypatch.setenv("GNOMON_DATASET_MEMO_MB", "0")
    engine.store.datasets.clear()
    read_dataset_artifact(engine, produced.run_id, "adv_testing.tar", "adv_data")
    read_dataset_artifact(engine, produced.run_id, "adv_testing.tar", "adv_data")
    assert len(calls) == 3


def test_a_dataset_written_in_this_process_is_served_exactly_as_the_disk_would(engine, monkeypatch):
    """The producer's pending memo entry equals a real read of the artifact, field by field."""
    from gnomon.core.datasets import artifacts

    produced = engine.run("test_produce", {"seed": 4})
    calls = []
    real = artifacts.load_dataset_tar
    monkeypatch.setattr(artifacts, "load_dataset_tar", lambda *a, **k: calls.append(1) or real(*a, **k))
    served = read_dataset_artifact(engine, produced.run_id, "adv_testing.tar", "adv_data")
    assert calls == []
    engine.store.datasets.clear()
    disk = read_dataset_artifact(engine, produced.run_id, "adv_testing.tar", "adv_data")
    assert calls == [1]
    np.testing.assert_array_equal(served.x, disk.x)
    np.testing.assert_array_equal(served.y, disk.y)
    assert served.class_names == disk.class_names and served.files == disk.files
    assert served.metadata == disk.metadata


def test_a_failed_producers_dataset_is_never_served_from_memory(gnomon_engine_factory, monkeypatch):
    from gnomon.core.datasets import artifacts

    def produce_then_fail(ctx, seed, **params):
        produce(ctx, seed, **params)
        raise RuntimeError("producer broke after writing")

    class _Failing:
        @hookimpl
        def register_tasks(self, register):
            register(Task(name="test_produce_fail", summary="write, then fail", schema=ProduceSchema,
                          fn=produce_then_fail))

    engine = gnomon_engine_factory(plugins=[_Failing()])
    with pytest.raises(TaskFailedError, match="producer broke after writing"):
        engine.run("test_produce_fail", {"seed": 1})
    run = engine.mlflow_client().search_runs([engine.ensure_tracking()])[0]
    assert run.info.status == "FAILED"
    assert any(key[1] == run.info.run_id for key in engine.store.datasets.entries)  # the producer left its data...
    calls = []
    real = artifacts.load_dataset_tar
    monkeypatch.setattr(artifacts, "load_dataset_tar", lambda *a, **k: calls.append(1) or real(*a, **k))
    read_dataset_artifact(engine, run.info.run_id, "adv_testing.tar", "adv_data")
    assert calls == [1]  # ...but a FAILED run's data is read from its artifact, never from memory
