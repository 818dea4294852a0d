"""Builtin part: the ART poison detectors and backdoor defences, and the small adapters they need.

Everything here calls ART 1.20 (``ActivationDefence``, ``SpectralSignatureDefense``,
``STRIP``, ``NeuralCleanse``). These places adapt ART; each is marked ``ADAPTER`` below and
described in docs/defenses.md:

* ``ActivationDefence`` reads the activations of a fixed layer (the last one before the
  output); :class:`LayerActivationDefence` lets the user choose the layer, nothing else.
* ART's ``STRIP`` only answers "abstain or not" per input, one input at a time; the task needs
  the entropy of every input (ROC, detection at a chosen false-alarm rate).
  :func:`strip_entropies` computes exactly ART's per-input entropy (same random draws, same
  superimposition, same normalisation) in batches.
* ART's ``KerasNeuralCleanse.reset`` zeroes the Keras 3 optimizer's learning rate (Keras 3
  keeps it among ``optimizer._variables``), so after the first class nothing is learnt;
  :func:`_reset_keeping_learning_rate` restores it after ART's reset.
* ART's ``KerasNeuralCleanse`` runs its optimisation step eagerly under Keras 3 (its
  ``@tf.function`` is commented out) and prints a tensor every step; :func:`compile_train_step`
  replaces that step by the identical step compiled with ``tf.function`` (the cost is read from
  ART's own ``cost_tensor`` so ART's cost schedule still applies). Backdoor search, outlier
  detection and the mitigations are ART's code.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any


def art_classifier(model):
    """ART ``KerasClassifier`` over a Keras model taking [0, 1] images (compiled with cross-entropy if needed)."""
    from art.estimators.classification import KerasClassifier

    if not isinstance(getattr(model, "loss", None), str) and getattr(model, "optimizer", None) is None:
        model.compile(optimizer="adam", loss="categorical_crossentropy")
    return KerasClassifier(model, clip_values=(0.0, 1.0))


def hidden_layer_count(model) -> int:
    """How many layers ART's KerasClassifier exposes (all but the output layer)."""
    return max(len(model.layers) - 1, 0)


# -- activation clustering ----------------------------------------------------------------------

def activation_defence(classifier, x, y_onehot, *, layer: int | None, ex_re_threshold: float | None = None):
    """An ART ``ActivationDefence`` reading the activations of ``layer`` (None: ART's own choice)."""
    from art.defences.detector.poison import ActivationDefence

    class LayerActivationDefence(ActivationDefence):
        """ADAPTER: ART's ActivationDefence with the layer chosen by the caller.

        ART always uses ``len(classifier.layer_names) - 1``; this only substitutes ``layer`` in
        that one call and otherwise runs ART's ``_get_activations`` unchanged (flattening,
        batch size 128).
        """

        chosen_layer: int | None = None

        def _get_activations(self, x_train=None):
            if self.chosen_layer is None:
                return super()._get_activations(x_train)
            import numpy as np

            data = self.x_train if x_train is None else x_train
            activations = self.classifier.get_activations(data, layer=int(self.chosen_layer), batch_size=128)
            return np.reshape(activations, (activations.shape[0], -1))

    defence = LayerActivationDefence(classifier, x, y_onehot, ex_re_threshold=ex_re_threshold)
    defence.chosen_layer = layer
    return defence


def refit_in_epochs(classifier, epochs: int, batch_size: int = 128):
    """ADAPTER: ART's ``clone_for_refitting``, whose clone's ``fit`` trains ``epochs`` epochs.

    Exclusionary reclassification calls ``clone.fit(x, y)`` with no arguments, i.e. ART's default
    of 20 epochs at batch 128. Only the epoch count (and batch size) is set here; the clone, its
    fresh weights and its compiled optimizer are ART's.
    """
    import functools

    art_clone = classifier.clone_for_refitting

    def clone_for_refitting():
        clone = art_clone()
        clone.fit = functools.partial(clone.fit, nb_epochs=int(epochs), batch_size=int(batch_size))
        return clone

    classifier.clone_for_refitting = clone_for_refitting
    return classifier


def run_activation_clustering(classifier, x, y_onehot, *, layer, nb_clusters, nb_dims, reduce, cluster_analysis,
                              ex_re_threshold=None, ex_re_epochs=1):
    """ART ``detect_poison``; returns ``(is_clean bool array, report, defence)``.

    With ``ex_re_threshold`` ART's exclusionary reclassification runs after the cluster analysis.
    """
    import numpy as np

    if ex_re_threshold is not None:
        refit_in_epochs(classifier, ex_re_epochs)
    defence = activation_defence(classifier, x, y_onehot, layer=layer, ex_re_threshold=ex_re_threshold)
    with quiet_stdout():
        report, is_clean = defence.detect_poison(nb_clusters=int(nb_clusters), nb_dims=int(nb_dims), reduce=reduce,
                                                 cluster_analysis=cluster_analysis)
    return np.asarray(is_clean, dtype=bool), report, defence


def run_spectral_signatures(classifier, x, y_onehot, *, expected_pp_poison, eps_multiplier, batch_size):
    """ART ``SpectralSignatureDefense.detect_poison``; returns ``(is_clean bool array, report)``."""
    import numpy as np
    from art.defences.detector.poison import SpectralSignatureDefense

    defence = SpectralSignatureDefense(classifier, x, y_onehot, expected_pp_poison=float(expected_pp_poison),
                                       batch_size=int(batch_size), eps_multiplier=float(eps_multiplier))
    with quiet_stdout():
        report, is_clean = defence.detect_poison()
    return np.asarray(is_clean, dtype=bool), report


# -- STRIP ----------------------------------------------------------------------------------------

#: STRIP entropy formulas: ART 1.20's and Gao et al.'s (see :func:`strip_entropies`).
STRIP_FORMULAS = {"art": 0, "paper": 1}


def strip_entropies(predict_fn, x, x_val, *, num_samples: int, chunk: int = 128, advance=None,
                    formula: str = "art"):
    """ADAPTER: ART STRIP's normalised entropy of every input in ``x``, in batches.

    For each input, in order, ART draws ``np.random.choice(np.arange(len(x_val)), num_samples)``
    from NumPy's global generator, superimposes the input on those images with
    ``art...strip.combine_images`` (alpha 0.5), predicts them and takes
    ``sum(scipy.stats.entropy(preds, base=2, axis=0)) / num_samples``. This does the same draws
    in the same order and the same arithmetic, but predicts ``chunk`` inputs' superimpositions
    in one call instead of one input at a time.

    ``formula="art"`` is ART 1.20's ``entropy(preds, base=2, axis=0)``: scipy normalises each
    class's column over the ``num_samples`` superimpositions, which is not the entropy of a
    prediction. ``formula="paper"`` is Gao et al.'s: the entropy over classes of each superimposed
    prediction (``axis=1``), summed and divided by ``num_samples``. Nothing else differs.
    """
    import numpy as np
    from art.estimators.poison_mitigation.strip.strip import combine_images
    from scipy.stats import entropy

    axis = STRIP_FORMULAS[formula]
    out = np.empty(len(x), dtype=np.float64)
    candidates = np.arange(len(x_val))
    for start in range(0, len(x), chunk):
        batch = x[start:start + chunk]
        picks = np.stack([np.random.choice(candidates, num_samples) for _ in range(len(batch))])
        blended = np.concatenate([np.array([combine_images(img, x_val[j]) for j in row])
                                  for img, row in zip(batch, picks, strict=True)])
        preds = predict_fn(blended).reshape(len(batch), num_samples, -1)
        # ART's per-input entropy(preds[i], axis=axis), for the whole chunk in one call (same reductions)
        out[start:start + len(batch)] = np.sum(entropy(preds, base=2, axis=axis + 1), axis=1) / float(num_samples)
        if advance is not None:
            advance(len(batch))
    return out


def strip_threshold(val_entropies, false_acceptance_rate: float) -> float:
    """ART STRIP's threshold (``STRIPMixin.mitigate``): a normal fitted to the clean entropies, at the FAR quantile."""
    from scipy.stats import norm

    mean, std = norm.fit(val_entropies)
    return float(norm.ppf(false_acceptance_rate, loc=mean, scale=std))


# -- Neural Cleanse ------------------------------------------------------------------------------

def neural_cleanse(model, params: dict[str, Any], rng=None):
    """ART's ``KerasNeuralCleanse`` over ``model`` (which it will modify), with the compiled step.

    With ``params["search"] == "paper"`` the trigger search is :func:`paper_search` (draws from ``rng``).
    """
    from art.defences.transformer.poisoning import NeuralCleanse

    classifier = art_classifier(model)
    with quiet_stdout():
        cleanse = NeuralCleanse(classifier)(
            classifier, steps=int(params["steps"]), init_cost=float(params["init_cost"]), norm=int(params["norm"]),
            learning_rate=float(params["nc_learning_rate"]),
            attack_success_threshold=float(params["attack_success_threshold"]), patience=int(params["patience"]),
            early_stop=bool(params["early_stop"]), early_stop_threshold=float(params["early_stop_threshold"]),
            early_stop_patience=int(params["early_stop_patience"]), cost_multiplier=float(params["cost_multiplier"]),
            batch_size=int(params["nc_batch_size"]))
    cleanse.train = compile_train_step(cleanse)
    cleanse.reset = _reset_keeping_learning_rate(cleanse)
    if params.get("search", "art") == "paper":
        import numpy as np

        cleanse.generate_backdoor = paper_search(cleanse, rng if rng is not None else np.random.default_rng(0))
    return cleanse


def _reset_keeping_learning_rate(nc):
    """ADAPTER: ART's ``reset`` (called before each class's search), then the learning rate restored.

    ART zeroes every variable in ``optimizer._variables`` to clear Adam's moments. Under Keras 3
    that list also holds the optimizer's ``learning_rate`` variable, so ART sets the learning rate
    to 0 and the mask and pattern never move again. This runs ART's reset unchanged, then assigns
    the learning rate back to ``nc.learning_rate``.
    """
    art_reset = type(nc).reset

    def reset():
        art_reset(nc)
        nc.opt.learning_rate.assign(float(nc.learning_rate))

    return reset


def compile_train_step(nc):
    """ADAPTER: ART KerasNeuralCleanse's ``train_step``, compiled with ``tf.function``.

    Line for line the step of ``art/estimators/poison_mitigation/neural_cleanse/keras.py``
    (tanh-normalised mask and pattern, ``(1 - mask) * x + mask * pattern``, cross-entropy to the
    target, L1/L2 mask regulariser divided by the channel count, Adam on the raw mask and
    pattern), minus its ``print``. ART multiplies by the Python float ``self.cost``, which a
    compiled function would freeze at trace time; ART keeps ``self.cost_tensor`` equal to it
    (every change of ``cost`` assigns it), so the compiled step reads that variable instead.
    It also stores ``mask_tensor`` / ``pattern_tensor`` as ART's step does (read after training).
    """
    import tensorflow as tf

    eps = nc.epsilon

    def normalised():
        mask = tf.tanh(nc.mask_tensor_raw) / (2 - eps) + 0.5
        pattern = tf.tanh(nc.pattern_tensor_raw) / (2 - eps) + 0.5
        return mask, pattern

    @tf.function
    def step(x_batch, y_batch):
        with tf.GradientTape() as tape:
            mask, pattern = normalised()
            x_adv = (1.0 - mask) * x_batch + mask * pattern
            y_pred = nc.model(x_adv, training=False)
            loss_ce = tf.keras.losses.categorical_crossentropy(y_batch, y_pred, from_logits=nc.use_logits)
            correct = tf.equal(tf.argmax(y_pred, axis=1), tf.argmax(y_batch, axis=1))
            loss_acc = tf.reduce_mean(tf.cast(correct, tf.float32))
            channels = tf.cast(tf.shape(mask)[-1], tf.float32)
            if nc.norm == 1:
                loss_reg = tf.reduce_sum(tf.abs(mask)) / channels
            else:
                loss_reg = tf.sqrt(tf.reduce_sum(tf.square(mask)) / channels)
            loss_combined = tf.reduce_mean(loss_ce) + nc.cost_tensor * loss_reg
        grads = tape.gradient(loss_combined, [nc.mask_tensor_raw, nc.pattern_tensor_raw])
        nc.opt.apply_gradients(zip(grads, [nc.mask_tensor_raw, nc.pattern_tensor_raw], strict=True))
        return loss_ce, loss_reg, loss_combined, loss_acc

    class _Tensors:
        """ART reads ``nc.mask_tensor.numpy()`` after a step; keep them current like ART's step does."""

    def train(x_batch, y_batch):
        x_batch = tf.convert_to_tensor(x_batch, dtype=tf.float32)
        y_batch = tf.convert_to_tensor(y_batch, dtype=tf.float32)
        out = step(x_batch, y_batch)
        nc.mask_tensor, nc.pattern_tensor = normalised()
        return out

    return train


def paper_search(nc, rng):
    """ADAPTER (an option, ``search="paper"``): Wang et al.'s trigger search where ART 1.20's departs from it.

    ART's ``KerasNeuralCleanse.generate_backdoor`` is the reference implementation's loop
    (bolunwang/backdoor ``visualizer.py``) except in two places, both fixed here and nothing else:

    * the reference sets the cost to ``init_cost`` after ``patience`` successful steps only while
      the cost is 0 (``if self.cost == 0 and avg_loss_acc >= threshold``). ART dropped
      ``self.cost == 0``, so once the trigger succeeds for ``patience`` steps it resets the cost
      and the up-counter at *every* step: the cost can never rise, the mask is only weakly pushed
      to shrink, and early stopping (which needs the cost to have gone up and down) never fires;
    * the reference starts every class's search from a fresh random mask and pattern
      (``reset_state``); ART draws them once and each class starts where the previous one ended.

    Returns a replacement for ``nc.generate_backdoor`` (same signature and result).
    """
    import numpy as np
    import tensorflow as tf
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    def generate_backdoor(x_val, y_val, y_target):
        nc.reset()
        shape = tuple(nc.mask_tensor_raw.shape)
        nc.mask_tensor_raw.assign(rng.uniform(size=shape).astype(np.float32))
        nc.pattern_tensor_raw.assign(rng.uniform(size=tuple(nc.pattern_tensor_raw.shape)).astype(np.float32))
        gen = ImageDataGenerator().flow(x_val, y_val, batch_size=nc.batch_size,
                                        seed=int(rng.integers(2**31 - 1)))
        mask_best = pattern_best = None
        reg_best = float("inf")
        cost_set_counter = cost_up_counter = cost_down_counter = early_stop_counter = 0
        cost_up_flag = cost_down_flag = False
        early_stop_reg_best = reg_best
        nc.steps_run = 0
        for _ in range(nc.steps):
            nc.steps_run += 1
            loss_reg, loss_acc = [], []
            for _ in range(len(x_val) // nc.batch_size):
                x_batch, _ = next(gen)
                _, batch_reg, _, batch_acc = nc.train(x_batch, [y_target] * x_batch.shape[0])
                loss_reg.extend(tf.reshape(batch_reg, [-1]).numpy().tolist())
                loss_acc.extend(tf.reshape(batch_acc, [-1]).numpy().tolist())
            avg_reg, avg_acc = float(np.mean(loss_reg)), float(np.mean(loss_acc))
            success = avg_acc >= nc.attack_success_threshold
            if success and avg_reg < reg_best:
                mask_best, pattern_best, reg_best = nc.mask_tensor.numpy(), nc.pattern_tensor.numpy(), avg_reg
            if nc.early_stop:
                if reg_best < float("inf"):
                    early_stop_counter = early_stop_counter + 1 if reg_best >= nc.early_stop_threshold * early_stop_reg_best else 0
                early_stop_reg_best = min(reg_best, early_stop_reg_best)
                if cost_down_flag and cost_up_flag and early_stop_counter >= nc.early_stop_patience:
                    break
            if nc.cost == 0 and success:  # the reference's condition; ART 1.20 omits "nc.cost == 0"
                cost_set_counter += 1
                if cost_set_counter >= nc.patience:
                    nc.cost = nc.init_cost
                    nc.cost_tensor.assign(nc.cost)
                    cost_up_counter = cost_down_counter = 0
                    cost_up_flag = cost_down_flag = False
            else:
                cost_set_counter = 0
            if success:
                cost_up_counter, cost_down_counter = cost_up_counter + 1, 0
            else:
                cost_up_counter, cost_down_counter = 0, cost_down_counter + 1
            if cost_up_counter >= nc.patience:
                cost_up_counter = 0
                nc.cost *= nc.cost_multiplier_up
                nc.cost_tensor.assign(nc.cost)
                cost_up_flag = True
            elif cost_down_counter >= nc.patience:
                cost_down_counter = 0
                nc.cost /= nc.cost_multiplier_down
                nc.cost_tensor.assign(nc.cost)
                cost_down_flag = True
        if mask_best is None:
            mask_best, pattern_best = nc.mask_tensor.numpy(), nc.pattern_tensor.numpy()
        return mask_best, pattern_best

    return generate_backdoor


def outlier_detection(nc, x_val, y_val_onehot, *, advance=None):
    """ART ``outlier_detection`` plus what it computes and throws away: every class's mask, pattern, L1 norm.

    Runs ART's ``generate_backdoor`` for every class (as ``NeuralCleanseMixin.outlier_detection``
    does) and applies ART's rule (median absolute deviation, consistency constant 1.4826,
    flagged when the norm is at most the median and the anomaly index exceeds 2). Returns
    ``(masks, patterns, l1_norms, anomaly_index, flagged)``.
    """
    import numpy as np
    from art.utils import to_categorical

    masks, patterns, norms = [], [], []
    nc.steps_by_class = []
    n_classes = nc.nb_classes
    for class_idx in range(n_classes):
        target = to_categorical([class_idx], n_classes).flatten()
        with quiet_stdout():
            mask, pattern = nc.generate_backdoor(x_val, y_val_onehot, target)
        masks.append(mask)
        patterns.append(pattern)
        norms.append(float(np.sum(np.abs(mask))))
        nc.steps_by_class.append(getattr(nc, "steps_run", nc.steps))  # ART's loop always runs all steps
        if advance is not None:
            advance(1)
    norms_arr = np.asarray(norms)
    median = np.median(norms_arr)
    mad = 1.4826 * np.median(np.abs(norms_arr - median))
    with np.errstate(divide="ignore", invalid="ignore"):
        anomaly = np.abs(norms_arr - median) / mad
    anomaly = np.nan_to_num(anomaly, nan=0.0, posinf=np.inf)
    flagged = [c for c in range(n_classes) if norms_arr[c] <= median and anomaly[c] > 2]
    return np.stack(masks), np.stack(patterns), norms_arr, anomaly, flagged


def mitigate_with(nc, x_val, y_val_onehot, masks, patterns, flagged, mitigation: str, *,
                  unlearning_data: str = "art", rng=None) -> int:
    """ART ``NeuralCleanseMixin.mitigate`` with the backdoors already found.

    ART's ``mitigate`` starts by re-running the whole backdoor search (``backdoor_examples`` ->
    ``outlier_detection``); here ``backdoor_examples`` returns the reverse-engineered examples
    built from the search just done, then ART's ``mitigate`` runs unchanged.

    ``unlearning_data="art"`` builds them exactly as ART does: the validation images *of the
    flagged class* with its reversed trigger, labelled with that class. ``"paper"`` builds them as
    Wang et al. (2019, section VI-C) describe unlearning: every validation image, a random 20% of
    them (``rng``) stamped with the flagged class's reversed trigger, all keeping their true labels.
    ART then fine-tunes on them for one epoch at batch size 1 either way.
    Returns how many examples ``backdoor_examples`` handed to ART (0: nothing flagged, nothing done).
    """
    import numpy as np

    def art_examples(x, y):
        clean, examples, labels = [], [], []
        for label in flagged:
            rows = np.argmax(y, axis=1) == label
            data, lab = np.copy(x[rows]), np.copy(y[rows])
            clean.append(np.copy(data))
            examples.append((1 - masks[label]) * data + masks[label] * patterns[label])
            labels.append(lab)
        if not examples:
            return np.array(clean), np.array(examples), np.array(labels)
        return np.vstack(clean), np.vstack(examples), np.vstack(labels)

    def paper_examples(x, y):
        if not flagged:
            return np.array([]), np.array([]), np.array([])
        data = np.copy(x)
        stamped = rng.choice(len(x), size=max(1, int(round(0.2 * len(x)))), replace=False)
        for i, row in enumerate(stamped):
            label = flagged[i % len(flagged)]
            data[row] = (1 - masks[label]) * data[row] + masks[label] * patterns[label]
        return np.copy(x), data, np.copy(y)

    build = paper_examples if unlearning_data == "paper" else art_examples
    handed = []

    def backdoor_examples(x, y):
        clean, examples, labels = build(x, y)
        handed.append(len(examples))
        return clean, examples, labels

    nc.backdoor_examples = backdoor_examples
    with quiet_stdout():
        nc.mitigate(x_val, y_val_onehot, [mitigation])
    return handed[0] if handed else 0


@contextlib.contextmanager
def quiet_stdout():
    """Swallow what ART and Keras print to stdout (progress bars, debug prints); stderr is untouched."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
