"""Collecting a finished workflow's results from the tracking store: steps, metrics, curves, example images.

Everything is read back from MLflow (the parent run's ``workflow/plan.json`` and step tags,
each child run's params and metrics, dataset artifacts), so a report can be rebuilt for
any finished workflow with ``gnomon report RUN_ID``.

Steps take part in the results table through their ``report`` labels in the workflow file:
``model`` (row group), ``data`` (``"clean"`` or ``"triggered"``) and ``defense``
(``"none"`` when absent).
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..environment import from_tags as env_from_tags
from ..errors import GnomonError
from .cache import outputs_from_tags, tag_name

DEFAULT_ACCURACY_METRIC = "accuracy"
DEFAULT_ASR_METRIC = "attack_success_rate"
NO_DEFENSE = "none"


@dataclass
class StepRecord:
    """One step as recorded: its run, params, metrics and report labels."""

    name: str
    task: str
    run_id: str | None
    status: str
    step_status: str  # ran / cached / failed / not run
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    duration_s: float | None = None
    environment: dict[str, str] = field(default_factory=dict)  # the step run's gnomon.env.* tags
    logged: dict[str, Any] | None = None  # the run's gnomon.logged tag (curves, section); None: not recorded


@dataclass
class ResultRow:
    """Clean accuracy, triggered accuracy and attack success rate of one model under one defense."""

    model: str
    defense: str
    clean_accuracy: float | None = None
    triggered_accuracy: float | None = None
    attack_success_rate: float | None = None
    defense_effectiveness: float | None = None  # DER against the same model without defense


def defense_effectiveness(clean_before: float | None, asr_before: float | None, clean_after: float | None,
                          asr_after: float | None) -> float | None:
    """BackdoorBench's defense effectiveness rating, in [0, 1].

    DER = (max(0, dASR) - max(0, dCA) + 1) / 2, with dASR the drop of the attack success rate
    and dCA the drop of clean accuracy caused by the defense: 1 means the ASR fell from 1 to 0
    at no cost in accuracy, 0.5 that nothing changed (or gains and costs cancel).
    """
    if None in (clean_before, asr_before, clean_after, asr_after):
        return None
    return (max(0.0, asr_before - asr_after) - max(0.0, clean_before - clean_after) + 1.0) / 2.0


@dataclass
class ReportData:
    """Everything the report shows."""

    run_id: str
    workflow: str
    status: str
    experiment: str
    variables: dict[str, str]
    versions: dict[str, str]
    steps: list[StepRecord]
    rows: list[ResultRow]
    curves: dict[str, dict[str, list[tuple[int, float]]]]  # metric -> step -> [(step, value)]
    examples: list[tuple[str, list[Any]]]  # (row label, images HxWxC float in [0, 1] or None)
    example_captions: list[str]
    wall_time_s: float | None = None
    notes: list[str] = field(default_factory=list)
    sections: list[Any] = field(default_factory=list)  # report_sections.Section, one per step that logged one
    environment: dict[str, str] = field(default_factory=dict)  # the parent run's gnomon.env.* tags


def get_run_or_fail(engine, run_id: str):
    """The MLflow run ``run_id``, or a clear :class:`GnomonError` naming the tracking store."""
    try:
        return engine.mlflow_client().get_run(run_id)
    except Exception as exc:
        raise GnomonError(f"no run '{run_id}' in the tracking store {engine.tracking_uri} ({type(exc).__name__})") \
            from None


def collect(engine, run_id: str, *, n_examples: int = 8) -> ReportData:
    """Read a workflow's parent run ``run_id`` and its steps' runs from the tracking store."""
    client = engine.mlflow_client()
    parent = get_run_or_fail(engine, run_id)
    tags = parent.data.tags
    if "gnomon.workflow" not in tags:
        raise GnomonError(f"run '{run_id}' is not a workflow run (it has no 'gnomon.workflow' tag); "
                          "pass the parent run id printed by 'gnomon workflow run'")
    plan, steps = workflow_steps(client, run_id, tags, parent.info.experiment_id)
    report_opts = plan.get("report") or {}
    experiment = client.get_experiment(parent.info.experiment_id)
    data = ReportData(
        run_id=run_id, workflow=tags["gnomon.workflow"], status=parent.info.status,
        experiment=experiment.name if experiment else parent.info.experiment_id,
        variables={k[4:]: v for k, v in parent.data.params.items() if k.startswith("var.")},
        versions=json.loads(tags.get("gnomon.versions", "{}")),
        environment=env_from_tags(tags),
        steps=steps,
        rows=result_rows(steps, report_opts.get("accuracy_metric", DEFAULT_ACCURACY_METRIC),
                         report_opts.get("asr_metric", DEFAULT_ASR_METRIC)),
        curves=training_curves(client, steps),
        examples=[], example_captions=[],
        wall_time_s=parent.data.metrics.get("gnomon_wall_time_s"),
    )
    try:
        data.examples, data.example_captions = example_images(engine, client, steps, n_examples)
    except Exception as exc:  # pictures are a bonus; the numbers must still be reported
        data.notes.append(f"example images unavailable: {type(exc).__name__}: {exc}")
    from .report_sections import collect_sections

    data.sections = collect_sections(client, steps)
    return data


def workflow_steps(client, run_id: str, tags: dict[str, str] | None = None,
                   experiment_id: str | None = None) -> tuple[dict[str, Any], list[StepRecord]]:
    """A workflow run's plan (``workflow/plan.json``) and a record of each planned step (its run's params and
    metrics, read with one search per hundred steps)."""
    if tags is None or experiment_id is None:
        parent = client.get_run(run_id)
        tags, experiment_id = (parent.data.tags if tags is None else tags), parent.info.experiment_id
    plan = _load_json_artifact(client, run_id, "workflow/plan.json") or {"steps": []}
    report_opts = plan.get("report") or {}
    child_ids = [tags.get(f"gnomon.step.{tag_name(p['name'])}.run_id") for p in plan.get("steps", [])]
    children = step_runs(client, experiment_id, [c for c in child_ids if c])
    steps = []
    for planned, child_id in zip(plan.get("steps", []), child_ids, strict=True):
        name = planned["name"]
        child_id = child_id or None
        step_status = tags.get(f"gnomon.step.{tag_name(name)}.status", "not run")
        shown = report_opts.get("labels") or {}
        labels = {k: shown.get(v, v) for k, v in (planned.get("report") or {}).items()}
        record = StepRecord(name=name, task=planned["task"], run_id=child_id, status="", step_status=step_status,
                            labels=labels)
        if child_id:
            child = children[child_id] if child_id in children else client.get_run(child_id)
            record.status = child.info.status
            record.params = dict(child.data.params)
            record.metrics = dict(child.data.metrics)
            record.outputs = outputs_from_tags(child.data.tags)
            record.environment = env_from_tags(child.data.tags)
            record.duration_s = child.data.metrics.get("gnomon_wall_time_s")
            record.logged = _logged(child.data.tags)
        steps.append(record)
    return plan, steps


def step_runs(client, experiment_id: str, run_ids: list[str], chunk: int = 100) -> dict[str, Any]:
    """``{run id: run}`` of the runs of ``experiment_id`` among ``run_ids``, one search per ``chunk`` ids
    (a run not found there, say of another experiment, is left out: read it with ``get_run``)."""
    wanted = list(dict.fromkeys(run_ids))
    found: dict[str, Any] = {}
    for start in range(0, len(wanted), chunk):
        ids = wanted[start:start + chunk]
        quoted = ", ".join(f"'{i}'" for i in ids if i.isalnum())
        if not quoted:
            continue
        for run in client.search_runs([experiment_id], filter_string=f"attributes.run_id IN ({quoted})",
                                      max_results=len(ids)):
            found[run.info.run_id] = run
    return found


def _logged(tags: dict[str, str]) -> dict[str, Any] | None:
    from ..context import LOGGED_TAG

    try:
        value = json.loads(tags[LOGGED_TAG])
    except (KeyError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _load_json_artifact(client, run_id: str, path: str) -> Any:
    with tempfile.TemporaryDirectory(prefix="gnomon-report-") as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception:
            return None
        return json.loads(Path(local).read_text())


def result_rows(steps: list[StepRecord], accuracy_metric: str, asr_metric: str) -> list[ResultRow]:
    """One row per (model, defense) from the steps labelled with ``model`` and ``data``."""
    rows: dict[tuple[str, str], ResultRow] = {}
    for step in steps:
        model, kind = step.labels.get("model"), step.labels.get("data")
        if not model or kind not in {"clean", "triggered"} or not step.run_id:
            continue
        defense = step.labels.get("defense", NO_DEFENSE)
        row = rows.setdefault((model, defense), ResultRow(model=model, defense=defense))
        accuracy = step.metrics.get(accuracy_metric)
        if kind == "clean":
            row.clean_accuracy = accuracy
        else:
            row.triggered_accuracy = accuracy
            row.attack_success_rate = step.metrics.get(asr_metric)
    models = list(dict.fromkeys(model for model, _ in rows))
    defenses = list(dict.fromkeys(defense for _, defense in rows))
    order = sorted(rows, key=lambda k: (models.index(k[0]), k[1] != NO_DEFENSE, defenses.index(k[1])))
    for (model, defense), row in rows.items():
        base = rows.get((model, NO_DEFENSE))
        if defense != NO_DEFENSE and base is not None:
            row.defense_effectiveness = defense_effectiveness(base.clean_accuracy, base.attack_success_rate,
                                                              row.clean_accuracy, row.attack_success_rate)
    return [rows[k] for k in order]


def training_curves(client, steps: list[StepRecord]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per-epoch metrics (logged with a step >= 1, or at two or more steps) of every non-evaluation step."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for step in steps:
        if not step.run_id or step.labels.get("data"):
            continue
        # a run that recorded which metrics it logged as a series: only those have a history worth reading
        keys = sorted(step.metrics) if step.logged is None else [k for k in step.logged.get("curves") or []
                                                                  if k in step.metrics]
        for key in keys:
            history = client.get_metric_history(step.run_id, key)
            if len(history) < 2 and not (history and history[0].step >= 1):
                continue  # a single value logged without an epoch step is not a curve
            points = sorted((m.step, m.value) for m in history)
            curves.setdefault(key, {})[step.name] = points
    return curves


# -- example images ------------------------------------------------------------------------------

@dataclass
class _Source:
    label: str
    run_id: str | None
    tar_name: str | None
    dataset_name: str | None
    data_dir: str | None


def _dataset_source(engine, step: StepRecord) -> _Source | None:
    """Where the dataset an evaluation step read comes from, from its params."""
    try:
        schema = engine.task(step.task).schema
    except GnomonError:
        return None
    meta = getattr(schema, "__dataset_source__", None) or {}
    run_field = meta.get("run_id_field") or ("dataset_run_id" if "dataset_run_id" in step.params else "run_id")
    dir_field = meta.get("data_dir_field", "data_dir")
    p = step.params
    label = step.labels.get("data", "")
    defense = step.labels.get("defense", NO_DEFENSE)
    label = label if defense == NO_DEFENSE else f"{label} + {defense}"
    out = step.outputs
    if out.get("dataset_run_id") == step.run_id and out.get("dataset_tar_name") and out.get("dataset_name"):
        # the step wrote the data it evaluated (a defense task): show what it wrote
        return _Source(label, step.run_id, str(out["dataset_tar_name"]), str(out["dataset_name"]), None)
    if str(p.get("load_dataset_from_mlruns", "")).lower() in {"true", "1", "yes"} and p.get(run_field):
        return _Source(label, p[run_field], p.get("dataset_tar_name"), p.get("dataset_name"), None)
    data_dir = p.get(dir_field)
    return _Source(label, None, None, None, None if data_dir in (None, "", "None") else data_dir)


class _Images:
    """Random access to a dataset's images by relative path, from a tar artifact or a folder."""

    def __init__(self, engine, client, source: _Source, tmp: Path):
        self.members: dict[str, Any] = {}
        self.metadata: dict[str, Any] = {}
        self._tar = None
        self._dir: Path | None = None
        self._dataset = None
        if source.run_id:
            from ..datasets.artifacts import dataset_in_memory

            self._dataset = dataset_in_memory(engine, source.run_id, source.tar_name or "", source.dataset_name or "")
        if self._dataset is not None:  # this process wrote or read it (the workflow that just ran): no tar to open
            ds = self._dataset
            self.metadata = dict(ds.metadata, class_names=list(ds.class_names))
            files = ds.files or [f"{ds.class_names[int(label)]}/{i}.png" for i, label in enumerate(ds.y)]
            self.members = {rel: i for i, rel in enumerate(files)}
        elif source.run_id:
            local = client.download_artifacts(source.run_id, source.tar_name, str(tmp))
            self._tar = tarfile.open(local)
            prefix = (source.dataset_name or "").strip("/")
            for member in self._tar.getmembers():
                if not member.isfile():
                    continue
                name = member.name.lstrip("./")
                rel = name[len(prefix) + 1:] if prefix and name.startswith(prefix + "/") else name
                if rel.endswith("gnomon-dataset.json"):
                    self.metadata = json.loads(self._tar.extractfile(member).read())
                elif rel.lower().endswith((".png", ".jpg", ".jpeg")):
                    self.members[rel] = member
        else:
            root = Path(source.data_dir) if source.data_dir else _default_test_dir()
            self._dir = root
            for path in sorted(root.glob("*/*")):
                if path.suffix.lower() in {".png", ".jpg", ".jpeg"}:
                    self.members[f"{path.parent.name}/{path.name}"] = path
        self._by_base = {}
        for rel in self.members:
            self._by_base.setdefault(rel.rsplit("/", 1)[-1], rel)

    def find(self, rel: str) -> str | None:
        if rel in self.members:
            return rel
        return self._by_base.get(rel.rsplit("/", 1)[-1])

    def image(self, rel: str):
        import io

        import numpy as np
        from PIL import Image

        member = self.members[rel]
        if self._dataset is not None:
            x = self._dataset.x[member]
            return x[..., 0] if x.shape[-1] == 1 else x  # as a decoded PNG: (h, w) grey or (h, w, 3)
        if self._tar is not None:
            raw = self._tar.extractfile(member).read()
            im = Image.open(io.BytesIO(raw))
        else:
            im = Image.open(member)
        with im:
            return np.asarray(im, dtype=np.float32) / 255.0

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def _default_test_dir() -> Path:
    from ..datasets import mnist_dir  # the data work provides it; imported lazily

    return Path(mnist_dir("testing"))


def example_images(engine, client, steps: list[StepRecord], n: int) -> tuple[list[tuple[str, list[Any]]], list[str]]:
    """A grid of the same ``n`` images across the datasets the evaluation steps read.

    Rows: clean, triggered, then each defended set (one row per distinct dataset label).
    The images are triggered samples whose true class differs from the target class.
    """
    sources: list[_Source] = []
    seen = set()
    for step in steps:
        if not step.run_id or step.labels.get("data") not in {"clean", "triggered"}:
            continue
        source = _dataset_source(engine, step)
        if source is None or source.label in seen:
            continue
        seen.add(source.label)
        sources.append(source)
    if not sources:
        return [], []
    order = {"clean": 0, "triggered": 1}
    sources.sort(key=lambda s: order.get(s.label, 2 if s.label.startswith("triggered") else 3))
    with tempfile.TemporaryDirectory(prefix="gnomon-report-") as tmp:
        readers = []
        try:
            for i, source in enumerate(sources):
                folder = Path(tmp) / str(i)
                folder.mkdir()
                readers.append(_Images(engine, client, source, folder))
            chosen = _choose_examples(readers, sources, n)
            rows = []
            for source, reader in zip(sources, readers, strict=True):
                images = []
                for rel in chosen:
                    found = reader.find(rel)
                    images.append(reader.image(found) if found else None)
                rows.append((source.label, images))
            captions = [rel.rsplit("/", 1)[0] for rel in chosen]
            return rows, [f"class {c}" for c in captions]
        finally:
            for reader in readers:
                reader.close()


def _choose_examples(readers: list[_Images], sources: list[_Source], n: int) -> list[str]:
    triggered = next((r for r, s in zip(readers, sources, strict=True) if s.label == "triggered"), None) or \
        next((r for r in readers if r.metadata.get("poisoned_files")), None) or readers[0]
    meta = triggered.metadata
    target = meta.get("target_class")
    candidates = [p for p in meta.get("poisoned_files") or [] if triggered.find(p)]
    if target is not None:
        names = meta.get("class_names") or []
        target_name = names[int(target)] if names and int(target) < len(names) else str(target)
        candidates = [p for p in candidates if p.split("/", 1)[0] != target_name] or candidates
    if not candidates:
        candidates = sorted(triggered.members)
    candidates = sorted(candidates)
    if len(candidates) <= n:
        return candidates
    stride = len(candidates) / n
    return [candidates[int(i * stride)] for i in range(n)]
