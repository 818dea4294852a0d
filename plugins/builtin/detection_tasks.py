"""Builtin part: backdoor detection and repair tasks on ART 1.20.

* ``activation_clustering`` (ART ``ActivationDefence``) and ``spectral_signatures`` (ART
  ``SpectralSignatureDefense``) flag poisoned training samples from a model's activations;
  each writes the cleaned dataset (flagged samples removed) for a ``train`` step to retrain on.
* ``strip`` (ART ``STRIP``) flags triggered inputs at inference time.
* ``neural_cleanse`` (ART ``NeuralCleanse``) reverse-engineers a trigger per class, flags
  the outlier classes and optionally repairs the model (unlearning, pruning, filtering).

Where ART needs adapting under Keras 3 see :mod:`.detection_art`. Every parameter is
validated before a run exists: ranges in the schemas, model-dependent limits (layer index,
a mitigation the architecture cannot support) in ``check``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError, fields, validate, validates_schema

from gnomon.core.fields import Bool, PositiveInt
from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import DatasetSource, RegisteredModel, TaskSchema
from gnomon.core.tasks import Task

if TYPE_CHECKING:
    from gnomon.core.context import CheckContext

#: What the detectors read by default from another run (gen_poison_test_data's default artifact).
DEFAULT_TAR = "adversarial_poison.tar.gz"
DEFAULT_NAME = "adv_poison_data"
#: Folder inside the cleaned-dataset artifact ``<task>_dataset.tar``.
CLEANED_NAME = "cleaned_training"
ANALYSES = ("smaller", "distance", "relative-size", "silhouette-scores")
MITIGATIONS = ("none", "unlearning", "pruning", "filtering")
#: Neural Cleanse trigger searches: ART 1.20's loop or Wang et al.'s (detection_art.paper_search).
NC_SEARCHES = ("art", "paper")


def cleaned_tar_name(task: str) -> str:
    """The artifact a detector writes, e.g. ``activation_clustering_dataset.tar``."""
    return f"{task}_dataset.tar"


class _ClassList(fields.String):
    """Comma-separated class indices; a bare integer is taken as one class.

    A resumed workflow reads an earlier step's output back from its run's tags, where "1" becomes
    the number 1 (``neural_cleanse``'s ``flagged_classes`` feeding ``classes``).
    """

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return super()._deserialize(value, attr, data, **kwargs)


def _classes_field() -> fields.String:
    return _ClassList(load_default="", metadata={
        "description": "Comma-separated class indices whose flags are kept (e.g. '1', or the classes Neural Cleanse "
                       "flagged); empty: every class. ART still runs on the whole dataset; samples of other classes "
                       "are never removed."})


def parse_classes(text: str | None) -> list[int] | None:
    """``"1,7"`` -> ``[1, 7]``; empty -> None (all classes). Raises ValueError on anything else."""
    text = (text or "").strip()
    if not text:
        return None
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"expected comma-separated class indices like '1' or '1,7'; got '{text}'")
        out.append(int(part))
    return sorted(set(out))


# -- schemas ------------------------------------------------------------------------------------

class _PoisonDetectorSchema(TaskSchema, DatasetSource("dataset_run_id", default_split="training",
                                                      default_tar=DEFAULT_TAR, default_name=DEFAULT_NAME),
                            RegisteredModel):
    """Parameters of both poison detectors: the training set to screen, the model trained on it."""

    batch_size = PositiveInt(load_default=128, metadata={"description": "Images per batch when reading activations."})
    classes = _classes_field()

    @validates_schema
    def _classes(self, data, **kwargs):
        try:
            parse_classes(data.get("classes"))
        except ValueError as exc:
            raise ValidationError(str(exc), "classes") from None


class ActivationClusteringSchema(_PoisonDetectorSchema):
    layer = fields.Integer(load_default=None, allow_none=True, strict=False, metadata={
        "description": "Index of the layer whose activations are clustered, into the model's layers without the "
                       "output layer ('gnomon models show ARCH'); default ART's choice, the last of them."})
    nb_clusters = fields.Integer(load_default=2, strict=False, validate=validate.Range(2, 20), metadata={
        "description": "Clusters per class, 2..20 (ART needs at least 2; only 'smaller' accepts more than 2)."})
    nb_dims = fields.Integer(load_default=10, strict=False, validate=validate.Range(1, 512), metadata={
        "description": "Dimensions the activations are reduced to before clustering, 1..512."})
    reduce = fields.String(load_default="PCA", validate=validate.OneOf(("PCA", "FastICA")), metadata={
        "description": "Dimensionality reduction: PCA or FastICA (ART also lists TSNE but cannot run it)."})
    cluster_analysis = fields.String(load_default="smaller", validate=validate.OneOf(ANALYSES), metadata={
        "description": "How ART decides which cluster is poison: " + ", ".join(ANALYSES) + "."})
    ex_re_threshold = fields.Float(load_default=None, allow_none=True, validate=validate.Range(min=0.0,
                                                                                             min_inclusive=False),
                                   metadata={"description": (
        "ART's exclusionary reclassification (Chen et al. 2018), off when none: a model retrained without the "
        "suspicious clusters classifies each of them; a cluster is cleared when the ratio of its samples classified "
        "as its label to those classified as the most frequent other class exceeds this (> 0; 1 = majority).")})
    ex_re_epochs = fields.Integer(load_default=1, strict=False, validate=validate.Range(1, 100), metadata={
        "description": "Epochs of that retraining (ART's default, 20, would cost 20 full trainings' epochs), 1..100."})

    @validates_schema
    def _analysis_clusters(self, data, **kwargs):
        if data.get("cluster_analysis", "smaller") != "smaller" and int(data.get("nb_clusters", 2)) != 2:
            raise ValidationError(f"cluster_analysis '{data['cluster_analysis']}' works with exactly 2 clusters "
                                  f"(ART); got {data['nb_clusters']}", "nb_clusters")
        if data.get("ex_re_threshold") is not None and data.get("cluster_analysis", "smaller") == "silhouette-scores":
            raise ValidationError("exclusionary reclassification reads ART's per-cluster report, which "
                                  "'silhouette-scores' does not write; use smaller, relative-size or distance",
                                  "ex_re_threshold")


class SpectralSignaturesSchema(_PoisonDetectorSchema):
    expected_pp_poison = fields.Float(load_default=0.33, validate=validate.Range(0.0, 1.0, min_inclusive=False),
                                      metadata={"description": "Expected fraction of poison per class, in (0, 1] "
                                                               "(ART's default 0.33)."})
    eps_multiplier = fields.Float(load_default=1.5, validate=validate.Range(min=0.0, min_inclusive=False), metadata={
        "description": "ART removes the eps_multiplier * expected_pp_poison highest-scoring samples of each class "
                       "(> 0; default 1.5 as in Tran et al.)."})


class StripSchema(TaskSchema, DatasetSource("dataset_run_id", default_split="testing", default_tar=DEFAULT_TAR,
                                            default_name=DEFAULT_NAME), RegisteredModel):
    clean_data_dir = fields.String(load_default=None, allow_none=True, metadata={
        "description": "Clean inputs screened for false alarms (class folders; default MNIST 'testing')."})
    reference_data_dir = fields.String(load_default=None, allow_none=True, metadata={
        "description": "Clean images STRIP superimposes and fits its entropy threshold on (default MNIST "
                       "'training', a seeded sample of n_reference)."})
    n_reference = fields.Integer(load_default=1000, strict=False, validate=validate.Range(2, 100000), metadata={
        "description": "How many reference images (2..100000)."})
    n_inputs = fields.Integer(load_default=2000, strict=False, validate=validate.Range(1, 1000000), metadata={
        "description": "At most this many triggered and this many clean inputs are screened (seeded sample)."})
    num_samples = fields.Integer(load_default=20, strict=False, validate=validate.Range(2, 1000), metadata={
        "description": "Superimpositions per input (ART's num_samples, 2..1000)."})
    false_acceptance_rate = fields.Float(load_default=0.01, validate=validate.Range(0.0, 1.0, min_inclusive=False,
                                                                                    max_inclusive=False),
                                         metadata={"description": "ART's false_acceptance_rate: the quantile of the "
                                                                  "clean entropy distribution used as threshold, (0, 1)."})
    entropy_formula = fields.String(load_default="paper", validate=validate.OneOf(("paper", "art")), metadata={
        "description": "'paper': Gao et al.'s entropy of each superimposed prediction over the classes; 'art': ART "
                       "1.20's scipy entropy along axis 0 (over the superimpositions, per class). docs/defenses.md."})
    batch_size = PositiveInt(load_default=128, metadata={"description": "Inputs superimposed per prediction batch."})


class _NeuralCleanseChecks:
    @validates_schema
    def _unlearning_data(self, data, **kwargs):
        if data.get("unlearning_data", "art") != "art" and data.get("mitigation") != "unlearning":
            raise ValidationError("only used with mitigation=unlearning", "unlearning_data")

    @validates_schema
    def _n_mitigation(self, data, **kwargs):
        if data.get("n_mitigation") is not None and data.get("mitigation", "none") == "none":
            raise ValidationError("only used with a mitigation (unlearning, pruning or filtering)", "n_mitigation")


class NeuralCleanseSchema(_NeuralCleanseChecks, TaskSchema, DatasetSource("dataset_run_id", default_split="training",
                                                    default_tar=DEFAULT_TAR, default_name=DEFAULT_NAME),
                          RegisteredModel):
    n_validation = fields.Integer(load_default=1000, strict=False, validate=validate.Range(10, 100000), metadata={
        "description": "Clean images (a seeded sample of the dataset, default clean MNIST 'training') used to "
                       "reverse-engineer triggers and to mitigate, 10..100000."})
    steps = fields.Integer(load_default=20, strict=False, validate=validate.Range(1, 100000), metadata={
        "description": "ART's steps: passes over the validation images per class (early stopping may end sooner)."})
    init_cost = fields.Float(load_default=1e-3, validate=validate.Range(min=0.0), metadata={
        "description": "ART's init_cost: initial weight of the mask-size term (>= 0)."})
    norm = fields.Integer(load_default=1, strict=False, validate=validate.OneOf((1, 2)), metadata={
        "description": "Norm of the mask-size term, 1 or 2 (ART's step supports only these)."})
    nc_learning_rate = fields.Float(load_default=0.1, validate=validate.Range(min=0.0, min_inclusive=False),
                                    metadata={"description": "ART's learning_rate of the mask/pattern optimiser."})
    attack_success_threshold = fields.Float(load_default=0.99, validate=validate.Range(0.0, 1.0), metadata={
        "description": "ART's attack_success_threshold: a mask counts once this fraction goes to the class."})
    patience = fields.Integer(load_default=5, strict=False, validate=validate.Range(min=1), metadata={
        "description": "ART's patience for changing the cost."})
    early_stop = Bool(load_default=True, metadata={"description": "ART's early_stop."})
    early_stop_threshold = fields.Float(load_default=0.99, validate=validate.Range(0.0, 1.0), metadata={
        "description": "ART's early_stop_threshold."})
    early_stop_patience = fields.Integer(load_default=10, strict=False, validate=validate.Range(min=1), metadata={
        "description": "ART's early_stop_patience."})
    cost_multiplier = fields.Float(load_default=1.5, validate=validate.Range(min=1.0, min_inclusive=False), metadata={
        "description": "ART's cost_multiplier (> 1)."})
    search = fields.String(load_default="art", validate=validate.OneOf(NC_SEARCHES), metadata={
        "description": "Trigger search: 'art' (ART 1.20's loop) or 'paper' (Wang et al.'s reference loop: the cost "
                       "rises while the trigger succeeds, early stopping works, a fresh random start per class; "
                       "docs/defenses.md)."})
    nc_batch_size = PositiveInt(load_default=32, metadata={"description": "ART's batch_size of the optimisation."})
    mitigation = fields.String(load_default="none", validate=validate.OneOf(MITIGATIONS), metadata={
        "description": "Repair with ART's mitigation: none, unlearning, pruning (both register the repaired model) "
                       "or filtering (abstain on inputs that excite the backdoor neurons; nothing to register)."})
    unlearning_data = fields.String(load_default="art", validate=validate.OneOf(("art", "paper")), metadata={
        "description": "Data unlearning fine-tunes on: 'art' (ART's: the flagged class's validation images with its "
                       "reversed trigger, labelled with that class) or 'paper' (Wang et al. 2019: every validation "
                       "image, 20% of them with the reversed trigger, true labels). Only with mitigation=unlearning."})
    n_mitigation = fields.Integer(load_default=None, allow_none=True, strict=False, validate=validate.Range(10, 100000),
                                  metadata={"description": "Clean images the mitigation uses, a seeded sample of the same "
                                                           "dataset drawn after the search, 10..100000; none (default): "
                                                           "the n_validation search images, as ART's mitigate. Wang et "
                                                           "al. unlearn with 10% of the training set (6000 for MNIST)."})
    model_tag = fields.String(load_default="neural_cleanse", metadata={
        "description": "Tag in the repaired model's registered name {EXPERIMENT}_{model_tag}_{architecture}."})
    test_data_dir = fields.String(load_default=None, allow_none=True, metadata={
        "description": "Clean test images for the repaired model's clean accuracy (default MNIST 'testing')."})
    triggered_run_id = fields.String(load_default=None, allow_none=True, metadata={
        "description": "Run holding triggered test data (gen_poison_test_data label_type=test) for the repaired "
                       "model's attack success rate; none: ASR is not measured."})
    triggered_tar_name = fields.String(load_default=DEFAULT_TAR, metadata={
        "description": "Tar artifact of the triggered test data."})
    triggered_dataset_name = fields.String(load_default=DEFAULT_NAME, metadata={
        "description": "Folder inside that tar."})
    eval_batch_size = PositiveInt(load_default=256, metadata={"description": "Batch size when evaluating."})


# -- checks (before any run) ------------------------------------------------------------------------

def _model_problems(ctx: CheckContext, params: dict[str, Any]) -> tuple[dict[str, str], Any]:
    from gnomon.core.models import check_model_ref, load_registered_model

    message = check_model_ref(ctx, params.get("model"))
    if message:
        return {"model": message}, None
    return {}, load_registered_model(ctx, params["model"])


def _check_dataset(ctx: CheckContext, params, field="dataset_run_id") -> dict[str, str]:
    from gnomon.core.datasets import check_dataset_source

    return dict(check_dataset_source(ctx, params, run_id_field=field))


def _check_folder(params, *names) -> dict[str, str]:
    from pathlib import Path

    return {n: f"'{params[n]}' is not a folder (expected <folder>/<class>/<images>)"
            for n in names if params.get(n) and not Path(str(params[n])).expanduser().is_dir()}


def _check_classes(params, model) -> dict[str, str]:
    from gnomon.core.models import n_outputs

    wanted = parse_classes(params.get("classes")) or []
    n = n_outputs(model)
    bad = [c for c in wanted if c >= n]
    return {"classes": f"class {bad[0]} is outside the model's classes 0..{n - 1}"} if bad else {}


def check_activation_clustering(ctx: CheckContext, params):
    """Dataset exists, model exists, ``layer`` is one of its hidden layers, ``classes`` within its classes."""
    from .detection_art import hidden_layer_count

    problems = _check_dataset(ctx, params)
    model_problems, model = _model_problems(ctx, params)
    problems.update(model_problems)
    if model is not None:
        problems.update(_check_classes(params, model))
        n = hidden_layer_count(model)
        layer = params.get("layer")
        if layer is not None and not 0 <= int(layer) < n:
            problems["layer"] = (f"layer {layer} is out of range: model '{params['model']}' has layers 0..{n - 1} "
                                 "before its output layer ('gnomon models show ARCH' lists them)")
    return problems


def check_spectral_signatures(ctx: CheckContext, params):
    problems = _check_dataset(ctx, params)
    model_problems, model = _model_problems(ctx, params)
    problems.update(model_problems)
    if model is not None:
        problems.update(_check_classes(params, model))
    return problems


def check_strip(ctx: CheckContext, params):
    problems = _check_dataset(ctx, params)
    problems.update(_check_folder(params, "clean_data_dir", "reference_data_dir"))
    problems.update(_model_problems(ctx, params)[0])
    return problems


def pruning_layer_problem(model) -> str | None:
    """Why ART's pruning/filtering cannot work on ``model`` (None if it can).

    ART reads the "penultimate" activations at ``layers[len(layer_names) - 2]`` and prunes
    neurons by zeroing that layer's ``[kernel, bias]`` columns, so it must be a Dense layer.
    """
    from .detection_art import hidden_layer_count

    index = hidden_layer_count(model) - 1
    if index < 0:
        return "the model has no hidden layer"
    layer = model.layers[index]
    weights = layer.get_weights()
    if len(weights) != 2 or getattr(weights[0], "ndim", 0) != 2:
        return (f"ART prunes the layer at index {index} ('{layer.name}', {type(layer).__name__}), which must be a "
                "Dense layer with a kernel and a bias")
    return None


def check_neural_cleanse(ctx: CheckContext, params):
    from gnomon.core.datasets.artifacts import check_artifact

    problems = _check_dataset(ctx, params)
    problems.update(_check_folder(params, "test_data_dir"))
    model_problems, model = _model_problems(ctx, params)
    problems.update(model_problems)
    if model is not None and params.get("mitigation") in ("pruning", "filtering"):
        reason = pruning_layer_problem(model)
        if reason:
            problems["mitigation"] = f"'{params['mitigation']}' is not possible for model '{params['model']}': {reason}"
    if params.get("triggered_run_id"):
        problem = check_artifact(ctx, str(params["triggered_run_id"]), str(params.get("triggered_tar_name") or ""))
        if problem:
            problems["triggered_run_id"] = problem
    return problems


# -- registration ---------------------------------------------------------------------------------

_DETECTOR_DESCRIPTION = (
    "Reads the training set from data_dir (default MNIST training) or, with load_dataset_from_mlruns=true, from "
    "dataset_tar_name/dataset_name of run dataset_run_id (e.g. gen_poison_test_data label_type=train), and the "
    "registered model trained on it. Logs the flagged samples (detection/flagged.json), a per-class breakdown "
    "(detection/per_class.json), precision/recall/F1 against the poisoned samples the dataset records, a picture of "
    "the per-class 2-D projection (detection/projection.png), and writes the cleaned dataset (flagged samples "
    "removed) as the artifact {tar} (folder " + CLEANED_NAME + ") for a train step to retrain on.")


@hookimpl
def register_tasks(register):
    """Register activation_clustering, spectral_signatures, strip and neural_cleanse."""
    from . import detection_run as run

    register(Task(name="activation_clustering", schema=ActivationClusteringSchema, fn=run.activation_clustering,
                  summary="Flag poisoned training samples by clustering activations (ART ActivationDefence).",
                  category="defense", check=check_activation_clustering,
                  description=_DETECTOR_DESCRIPTION.format(tar=cleaned_tar_name("activation_clustering"))))
    register(Task(name="spectral_signatures", schema=SpectralSignaturesSchema, fn=run.spectral_signatures,
                  summary="Flag poisoned training samples by spectral signatures (ART SpectralSignatureDefense).",
                  category="defense", check=check_spectral_signatures,
                  description=_DETECTOR_DESCRIPTION.format(tar=cleaned_tar_name("spectral_signatures"))))
    register(Task(name="strip", schema=StripSchema, fn=run.strip, category="defense", check=check_strip,
                  summary="Detect triggered inputs at inference time by superimposition entropy (ART STRIP).",
                  description="Screens the triggered inputs of the dataset (default: an artifact of "
                              "gen_poison_test_data label_type=test) and clean inputs (clean_data_dir); logs ROC AUC, "
                              "detection at 1% and 5% false alarms, detection and false-alarm rate at ART's "
                              "threshold, accuracy and ASR when flagged inputs abstain, and an entropy histogram."))
    register(Task(name="neural_cleanse", schema=NeuralCleanseSchema, fn=run.neural_cleanse, category="defense",
                  check=check_neural_cleanse,
                  summary="Reverse-engineer triggers, flag backdoored classes, optionally repair (ART NeuralCleanse).",
                  description="Logs each class's mask and pattern (neural_cleanse/triggers.png, masks.npz), L1 norm "
                              "and anomaly index, and the flagged classes; with mitigation=unlearning or pruning "
                              "registers the repaired model and logs its clean accuracy and (with triggered_run_id) "
                              "attack success rate; filtering logs them for the abstaining classifier."))
