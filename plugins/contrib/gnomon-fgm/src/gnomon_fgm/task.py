"""The ``fgm`` task: Fast Gradient Method adversarial examples written as a dataset artifact.

FGM (Goodfellow et al. 2015; ``norm=inf`` is FGSM) moves each image by ``eps`` along the sign
(L-inf), or the normalised direction (L1, L2), of the gradient of the model's loss: away from
the true class, or, with ``targeted=true``, towards ``target_class``. With ``minimal=true``
ART searches for the smallest ``eps`` (in steps of ``eps_step``, up to ``eps``) that fools the
model.

Logged: ``l2_mean``, ``l2_max``, ``linf_mean``, ``linf_max`` (size of the perturbation),
``clean_*`` and ``adv_*`` model metrics (``accuracy``, ``loss``, ``precision``, ``recall``,
``auc``), ``evasion_success_rate`` (among images the model classified correctly, the fraction
it gets wrong after the attack) and, when targeted, ``adv_attack_success_rate`` (among images
of another class, the fraction classified as ``target_class``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from marshmallow import ValidationError, fields, validate, validates_schema

from gnomon.core.fields import Bool, FileName, NonNegativeInt, PositiveFloat, PositiveInt, RegistryName
from gnomon.core.schemas import DatasetSource, RegisteredModel, TaskSchema
from gnomon.core.tasks import Task

if TYPE_CHECKING:
    from gnomon.core.context import CheckContext

NAME = "fgm"
NORMS = ("inf", "1", "2")
#: Dioptra's names for the output artifact and folder.
ADV_TAR_NAME, ADV_DATA_DIR = "testing_adversarial_fgm.tar.gz", "adv_testing"


class FgmSchema(TaskSchema, DatasetSource("dataset_run_id", default_tar="testing_adversarial.tar",
                                          default_name="adv_testing"), RegisteredModel):
    """Parameters of ``fgm``: dataset source, ``model``, attack options, output artifact, ``seed``."""

    model_architecture = RegistryName("model", load_default=None, allow_none=True, metadata={
        "description": "Architecture 'model' was built with (any registered model); when given it must match "
                       "the architecture recorded on the model version."})
    batch_size = PositiveInt(load_default=32, metadata={"description": "Batch size for the attack and evaluation."})
    eps = fields.Float(load_default=0.3, validate=validate.Range(min=0.0, min_inclusive=False), metadata={
        "description": "Attack step size: largest perturbation in the chosen norm (images are in [0, 1])."})
    eps_step = PositiveFloat(load_default=0.1, metadata={
        "description": "Step of the search for the smallest eps that fools the model (with minimal=true)."})
    norm = fields.String(load_default="inf", validate=validate.OneOf(NORMS), metadata={
        "description": "Norm of the perturbation: inf (FGSM), 1 or 2."})
    minimal = Bool(load_default=False, metadata={
        "description": "Search, in steps of eps_step up to eps, for the smallest perturbation that fools the model."})
    targeted = Bool(load_default=False, metadata={
        "description": "Push every image towards target_class instead of away from its true class."})
    target_class = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0), metadata={
        "description": "Class index the targeted attack aims for (required with targeted=true)."})
    num_random_init = NonNegativeInt(load_default=0, metadata={
        "description": "Random starting points inside the eps-ball (0: start from the image); seeded by seed."})
    max_samples = NonNegativeInt(load_default=0, metadata={
        "description": "Attack a seeded random subset of this many images (0: the whole dataset)."})
    adv_tar_name = FileName(tar=True, load_default=ADV_TAR_NAME, metadata={
        "description": "Tar artifact name of the adversarial dataset."})
    adv_data_dir = FileName(load_default=ADV_DATA_DIR, metadata={
        "description": "Folder inside the tar holding the class folders of the adversarial dataset."})

    @validates_schema
    def _check_target(self, data, **kwargs):
        if data.get("targeted") and data.get("target_class") is None:
            raise ValidationError("required when targeted is true", "target_class")
        if not data.get("targeted") and data.get("target_class") is not None:
            raise ValidationError("only used with targeted=true", "target_class")


def check(ctx: CheckContext, params):
    """Dataset source and model exist; architecture and target class fit the model."""
    from gnomon.core.datasets import check_dataset_source
    from gnomon.core.models import check_model

    problems = dict(check_dataset_source(ctx))
    problems.update(check_model(ctx, params, target_class_field="target_class"))
    return problems


def art_classifier(model, n_classes: int):
    """Wrap a Keras (TensorFlow backend) classifier with softmax outputs for ART, images in [0, 1]."""
    import warnings

    import keras

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*PyTorch not found.*")
        from art.estimators.classification import TensorFlowV2Classifier

    shape = tuple(int(v) for v in model.inputs[0].shape[1:])
    return TensorFlowV2Classifier(model=model, nb_classes=int(n_classes), input_shape=shape,
                                  loss_object=keras.losses.CategoricalCrossentropy(from_logits=False),
                                  clip_values=(0.0, 1.0))


def generate(ctx, classifier, x, y_onehot, *, eps, eps_step, norm, minimal, targeted, num_random_init,
             batch_size):
    """FGM adversarial examples for ``x`` (NHWC float32 in [0, 1]), in chunks with a progress bar."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*PyTorch not found.*")
        from art.attacks.evasion import FastGradientMethod

    attack = FastGradientMethod(classifier, norm=np.inf if norm == "inf" else int(norm), eps=eps,
                                eps_step=eps_step, targeted=targeted, num_random_init=num_random_init,
                                batch_size=batch_size, minimal=minimal)
    out = np.empty_like(x, dtype=np.float32)
    chunk = max(batch_size, 8 * batch_size)
    with ctx.progress(f"fgm (norm {norm}, eps {eps:g})", total=len(x)) as advance:
        for start in range(0, len(x), chunk):
            stop = min(start + chunk, len(x))
            out[start:stop] = attack.generate(x=x[start:stop], y=y_onehot[start:stop])
            advance(stop - start)
    return np.clip(out, 0.0, 1.0)


def run(ctx, *, model, model_architecture, batch_size, eps, eps_step, norm, minimal, targeted, target_class,
        num_random_init, max_samples, adv_tar_name, adv_data_dir, **_source):
    """Attack ``model`` on the input dataset, write the adversarial dataset, log distances and metrics."""
    import numpy as np

    from gnomon.core.datasets import quantize, resolve_dataset, write_dataset_artifact
    from gnomon.core.models import evaluate, fit_to_model, load_registered_model, n_outputs, one_hot
    from gnomon.core.perturbation import distance_metrics

    data = resolve_dataset(ctx)
    if max_samples and max_samples < len(data):
        data = data.subset(np.sort(ctx.rng.choice(len(data), size=max_samples, replace=False)))
    keras_model = load_registered_model(ctx, model)
    ctx.seed_tensorflow()
    n_classes = n_outputs(keras_model)
    if targeted and target_class >= n_classes:
        raise ValueError(f"target_class {target_class} is not a class of model '{model}' ({n_classes} classes)")
    clean = data.replace(x=quantize(fit_to_model(data.x, keras_model)))
    labels = np.full(len(clean), target_class) if targeted else clean.y
    ctx.info(f"attacking {len(clean)} images {clean.image_shape} with FGM (norm {norm}, eps {eps:g}"
             + (f", towards class {target_class})" if targeted else ")"))
    x_adv = generate(ctx, art_classifier(keras_model, n_classes), clean.x, one_hot(labels, n_classes), eps=eps,
                     eps_step=eps_step, norm=norm, minimal=minimal, targeted=targeted,
                     num_random_init=num_random_init, batch_size=batch_size)

    metadata = dict(clean.metadata)
    metadata["attack"] = {"name": NAME, "model": model, "eps": eps, "eps_step": eps_step, "norm": norm,
                          "minimal": minimal, "targeted": targeted, "num_random_init": num_random_init}
    if targeted:  # every image is attacked: evaluate() then reports the targeted success rate
        metadata["target_class"] = int(target_class)
        metadata["poisoned_indices"] = list(range(len(clean)))
        if clean.files is not None:
            metadata["poisoned_files"] = list(clean.files)
    adversarial = write_dataset_artifact(ctx, clean.replace(x=x_adv, metadata=metadata), adv_tar_name, adv_data_dir)

    ctx.log_metrics(distance_metrics(clean.x, adversarial.x))
    clean_scores = evaluate(keras_model, clean, batch_size)
    adv_scores = evaluate(keras_model, adversarial, batch_size)
    ctx.log_metrics({f"clean_{k}": v for k, v in clean_scores.items() if _finite(v)})
    ctx.log_metrics({f"adv_{k}": v for k, v in adv_scores.items() if _finite(v)})
    rate = evasion_success_rate(keras_model, clean.x, adversarial.x, clean.y, batch_size)
    if rate is not None:
        ctx.log_metric("evasion_success_rate", rate)
    ctx.info(f"fgm: accuracy {clean_scores['accuracy']:.4f} -> {adv_scores['accuracy']:.4f}; "
             f"artifact {adv_tar_name} (folder {adv_data_dir})")
    return {"dataset_run_id": ctx.run_id, "dataset_tar_name": adv_tar_name, "dataset_name": adv_data_dir}


def evasion_success_rate(model, x_clean, x_adv, y, batch_size: int) -> float | None:
    """Among images ``model`` classifies correctly, the fraction it misclassifies after the attack."""
    import numpy as np

    from gnomon.core.models import predict

    before = np.argmax(predict(model, x_clean, batch_size), axis=-1)
    after = np.argmax(predict(model, x_adv, batch_size), axis=-1)
    correct = before == np.asarray(y)
    return float(np.mean(after[correct] != before[correct])) if correct.any() else None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


TASK = Task(
    name=NAME,
    summary="Fast Gradient Method evasion attack (ART): adversarial examples as a dataset artifact.",
    schema=FgmSchema,
    fn=run,
    category="attack",
    check=check,
    description=("Attacks a registered model with ART FastGradientMethod on data_dir (default: MNIST testing) or "
                 "another run's dataset artifact; writes the adversarial images as the artifact adv_tar_name "
                 "(folder adv_data_dir) and logs the L2/L-inf perturbation size, the model's clean_* and adv_* "
                 "metrics and evasion_success_rate."),
)
