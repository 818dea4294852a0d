"""Madry PGD adversarial training for Keras 3 models (``train -P apply_defense=true``).

This is the procedure of ART's ``AdversarialTrainerMadryPGD`` / ``AdversarialTrainer``
(Madry et al., https://arxiv.org/abs/1706.06083), written as compiled TensorFlow so it runs
at Keras speed instead of ART's eager per-batch attack:

* every epoch the data is shuffled and cut into batches of ``batch_size``;
* in each batch, ``ceil(ratio * len(batch))`` samples chosen at random (all of them for
  ``ratio=1``, Madry's protocol) are replaced by untargeted L-infinity PGD examples made
  against the *current* model: start from a uniform random point in the ``eps`` ball
  (ART's ``num_random_init=1``), take ``max_iter`` steps of ``eps_step * sign(gradient of the
  loss)``, projecting back onto the ``eps`` ball around the clean image and onto [0, 1] after
  each step;
* the model takes one optimiser step on the mixed batch with its compiled loss, optimiser
  and metrics (``model.train_on_batch``).

Randomness comes from the run's ``seed`` only (``ctx.rng`` for shuffling and choices, a
seeded ``tf.random.Generator`` for the random starts).
"""

from __future__ import annotations

import math
from typing import Any


def _check_args(eps: float, eps_step: float, max_iter: int, ratio: float, epochs: float, batch_size: int) -> None:
    problems = []
    if not eps >= 0:
        problems.append(f"pgd_eps must be >= 0 (got {eps!r})")
    if not eps_step > 0:
        problems.append(f"pgd_eps_step must be > 0 (got {eps_step!r})")
    if int(max_iter) != max_iter or max_iter < 0:
        problems.append(f"pgd_max_iter must be an integer >= 0 (got {max_iter!r})")
    if not 0 < ratio <= 1:
        problems.append(f"pgd_ratio must be in (0, 1] (got {ratio!r})")
    if not epochs > 0:
        problems.append(f"epochs must be > 0 (got {epochs!r})")
    if int(batch_size) != batch_size or batch_size < 1:
        problems.append(f"batch_size must be a positive integer (got {batch_size!r})")
    if problems:
        raise ValueError("invalid adversarial training options: " + "; ".join(problems))


def _loss_fn(model):
    """The model's compiled loss as a callable ``loss(y_true, y_pred)`` (categorical cross-entropy if none)."""
    import keras

    loss = getattr(model, "loss", None)
    if loss is None:
        return keras.losses.CategoricalCrossentropy()
    if isinstance(loss, (list, tuple, dict)):
        raise ValueError("adversarial training needs a model with a single loss")
    return keras.losses.get(loss)


def make_pgd(model, *, eps: float, eps_step: float, max_iter: int, clip_values=(0.0, 1.0), seed: int = 0,
             random_init: bool = True):
    """A compiled function ``pgd(x, y_onehot) -> (x_adv, loss_adv)``: untargeted L-inf PGD against ``model``.

    ``loss_adv`` is the mean loss of the model on ``x_adv`` (before any training step).
    """
    import tensorflow as tf

    loss_fn = _loss_fn(model)
    lo, hi = float(clip_values[0]), float(clip_values[1])
    gen = tf.random.Generator.from_seed(int(seed) % (2**63))
    eps_t, step_t = tf.constant(eps, tf.float32), tf.constant(eps_step, tf.float32)
    n_iter = int(max_iter)

    def _loss(x, y):
        return tf.reduce_mean(loss_fn(y, model(x, training=False)))

    @tf.function(reduce_retracing=True)
    def pgd(x, y):
        x = tf.convert_to_tensor(x, tf.float32)
        y = tf.convert_to_tensor(y, tf.float32)
        x_adv = x
        if random_init:
            x_adv = x + gen.uniform(tf.shape(x), -eps_t, eps_t, dtype=tf.float32)
            x_adv = tf.clip_by_value(x_adv, lo, hi)
        for _ in tf.range(n_iter):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                loss = _loss(x_adv, y)
            grad = tape.gradient(loss, x_adv)
            x_adv = x_adv + step_t * tf.sign(grad)
            x_adv = tf.clip_by_value(x_adv, x - eps_t, x + eps_t)
            x_adv = tf.clip_by_value(x_adv, lo, hi)
        return tf.stop_gradient(x_adv), _loss(x_adv, y)

    return pgd


def _metric_keys(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def fit_adversarial(ctx, model, x, y_onehot, *, eps: float, eps_step: float, max_iter: int, ratio: float,
                    epochs: float, batch_size: int, validation_data=None) -> dict[str, list[float]]:
    """Train the compiled Keras ``model`` with Madry PGD adversarial training; return a Keras-style history.

    Args:
        ctx: the run context (``ctx.rng``, ``ctx.seed``, ``ctx.progress``).
        model: a compiled Keras model taking images in [0, 1].
        x, y_onehot: training images (NHWC float, [0, 1]) and one-hot labels.
        eps: L-infinity radius of the PGD perturbations (``pgd_eps``), in pixel units of [0, 1].
        eps_step: PGD step size (``pgd_eps_step``).
        max_iter: PGD iterations (``pgd_max_iter``).
        ratio: fraction of each batch replaced by adversarial examples (``pgd_ratio``; 1 = Madry).
        epochs: passes over the data; a fractional value trains on part of the last pass.
        batch_size: samples per training step.
        validation_data: optional ``(x_val, y_val_onehot)`` evaluated (clean) after every epoch.

    Returns:
        ``{"loss": [...], "accuracy": [...], ..., "adversarial_loss": [...], "val_loss": [...], ...}``,
        one value per epoch: the compiled metrics on the mixed batches (per-batch values averaged
        over the epoch, weighted by batch size), the mean loss of the
        PGD examples before each step (``adversarial_loss``) and the clean validation metrics.
    """
    import numpy as np

    _check_args(eps, eps_step, max_iter, ratio, epochs, batch_size)
    x = np.asarray(x, dtype=np.float32)
    y_onehot = np.asarray(y_onehot, dtype=np.float32)
    if len(x) != len(y_onehot) or len(x) == 0:
        raise ValueError(f"fit_adversarial needs as many labels as images (got {len(x)} images, "
                         f"{len(y_onehot)} labels) and at least one image")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("fit_adversarial expects images in [0, 1] "
                         f"(got values in [{float(x.min()):g}, {float(x.max()):g}])")
    if getattr(model, "optimizer", None) is None:
        raise ValueError("fit_adversarial needs a compiled model (call compile_model first)")

    rng = ctx.rng
    seed = int(rng.integers(0, 2**31 - 1))
    pgd = make_pgd(model, eps=eps, eps_step=eps_step, max_iter=max_iter, seed=seed)

    n = len(x)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, round(epochs * steps_per_epoch))
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    history: dict[str, list[float]] = {}

    def record(values: dict[str, float]) -> None:
        for key, value in values.items():
            history.setdefault(key, []).append(float(value))

    done = 0
    with ctx.progress(f"PGD adversarial training (eps={eps:g}, {max_iter} steps)", total=total_steps) as advance:
        for _epoch in range(n_epochs):
            order = rng.permutation(n)
            steps = min(steps_per_epoch, total_steps - done)
            adv_loss_sum, adv_count, seen = 0.0, 0, 0
            sums: dict[str, float] = {}
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                xb, yb = x[idx].copy(), y_onehot[idx]
                n_adv = int(math.ceil(ratio * len(idx)))
                adv_ids = rng.permutation(len(idx)) if ratio >= 1 else rng.choice(len(idx), size=n_adv, replace=False)
                x_adv, loss_adv = pgd(xb[adv_ids], yb[adv_ids])
                xb[adv_ids] = x_adv.numpy()
                adv_loss_sum += float(loss_adv) * len(adv_ids)
                adv_count += len(adv_ids)
                result = _metric_keys(model.train_on_batch(xb, yb, return_dict=True))
                for key, value in result.items():
                    sums[key] = sums.get(key, 0.0) + value * len(idx)
                seen += len(idx)
                advance(1)
            done += steps
            values = {key: total / seen for key, total in sums.items()}
            values["adversarial_loss"] = adv_loss_sum / max(adv_count, 1)
            if validation_data is not None:
                x_val, y_val = validation_data
                val = model.evaluate(np.asarray(x_val, np.float32), np.asarray(y_val, np.float32),
                                     batch_size=batch_size, verbose=0, return_dict=True)
                values.update({f"val_{k}": v for k, v in _metric_keys(val).items()})
            record(values)
    return history
