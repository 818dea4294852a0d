"""The baseline backdoor demo as a plain ART + Keras script: the reference for bench_workflow.py.

Same steps, data, model, epochs and defenses as ``gnomon workflow run baseline``, without
gnomon, MLflow or dataset artifacts:

1. train le_net on MNIST training (validation split, early stopping on val_loss);
2. trigger every test image (ART ``add_pattern_bd``, true labels kept) and 10% of the training
   images (relabelled to the target class) with ART ``PoisoningAttackBackdoor``;
3. train le_net on the poisoned training set;
4. evaluate both models on the clean and the triggered test set (accuracy, attack success rate);
5. apply ART SpatialSmoothing (window 3), JpegCompression (quality 50) and GaussianAugmentation
   (sigma 0.3, every image replaced) to the clean and the triggered test set; evaluate both models.

Usage::

    python benchmarks/plain_baseline_demo.py --mnist /path/to/idx-folder [--epochs 3] [--json out.json]

The MNIST folder holds the four standard IDX files (``*-idx?-ubyte`` or ``.gz``). The le_net layers
are those of gnomon's builtin ``le_net`` (Dioptra's), written out here so the script stands alone.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def read_idx(path: Path):
    """An IDX file (optionally .gz) as a numpy array."""
    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_mnist(folder: Path):
    """``(x_train, y_train, x_test, y_test)``: float32 NHWC in [0, 1] and int64 labels."""
    import numpy as np

    def find(stem):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
        raise SystemExit(f"{folder} has no {stem}[.gz]")

    out = []
    for prefix in ("train", "t10k"):
        x = read_idx(find(f"{prefix}-images-idx3-ubyte")).astype(np.float32)[..., None] / 255.0
        y = read_idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        out += [x, y]
    return tuple(out)


def le_net(n_classes: int):
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(n_classes, activation="softmax"),
    ])


def train(x, y, *, epochs: int, batch_size: int, learning_rate: float, validation_split: float, patience: int,
          seed: int):
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = int(round(validation_split * len(x)))
    val, fit = order[:n_val], order[n_val:]
    model = le_net(10)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy",
                  metrics=["accuracy", keras.metrics.Precision(), keras.metrics.Recall(), keras.metrics.AUC()])
    onehot = keras.utils.to_categorical(y, 10)
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)]
    model.fit(x[fit], onehot[fit], validation_data=(x[val], onehot[val]), epochs=epochs, batch_size=batch_size,
              shuffle=True, callbacks=callbacks, verbose=0)
    return model


def evaluate(model, x, y, triggered=None, target: int = 1) -> dict[str, float]:
    import numpy as np

    pred = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1)
    out = {"accuracy": float(np.mean(pred == y))}
    if triggered is not None:
        eligible = triggered & (y != target)
        out["attack_success_rate"] = float(np.mean(pred[eligible] == target))
    return out


def quantize(x):
    import numpy as np

    return np.round(x * 255.0) / 255.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mnist", type=Path, default=os.environ.get("GNOMON_MNIST_SOURCE"),
                        help="folder of the four MNIST IDX files (default: $GNOMON_MNIST_SOURCE)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.001)
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--patience", type=int, default=1)
    parser.add_argument("--target", type=int, default=1)
    parser.add_argument("--poison-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write timings and results here")
    args = parser.parse_args(argv)
    if not args.mnist:
        parser.error("--mnist (or GNOMON_MNIST_SOURCE) is required")

    started = time.perf_counter()
    import numpy as np
    from art.attacks.poisoning import PoisoningAttackBackdoor
    from art.attacks.poisoning.perturbations import add_pattern_bd
    from art.defences.preprocessor import GaussianAugmentation, JpegCompression, SpatialSmoothing

    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t0, 3)
        return now

    t = time.perf_counter()
    x_train, y_train, x_test, y_test = load_mnist(args.mnist)
    t = lap("load", t)

    clean_model = train(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        learning_rate=args.learning_rate, validation_split=args.validation_split,
                        patience=args.patience, seed=args.seed)
    t = lap("train_clean", t)

    def trigger(x):
        return add_pattern_bd(x[..., 0], distance=2, pixel_value=1.0)[..., None]

    backdoor = PoisoningAttackBackdoor(trigger)
    rng = np.random.default_rng(args.seed)
    x_test_trig, _ = backdoor.poison(x_test, y=np.eye(10)[y_test])
    x_test_trig = quantize(x_test_trig)
    all_test = np.ones(len(x_test), dtype=bool)
    t = lap("poison_test", t)
    chosen = np.sort(rng.choice(len(x_train), size=int(round(args.poison_fraction * len(x_train))), replace=False))
    x_poison, y_poison = x_train.copy(), y_train.copy()
    x_sel, _ = backdoor.poison(x_train[chosen], y=np.eye(10)[args.target], broadcast=True)
    x_poison[chosen] = quantize(x_sel)
    y_poison[chosen] = args.target
    t = lap("poison_train", t)

    poisoned_model = train(x_poison, y_poison, epochs=args.epochs, batch_size=args.batch_size,
                           learning_rate=args.learning_rate, validation_split=args.validation_split,
                           patience=args.patience, seed=args.seed)
    t = lap("train_poisoned", t)

    results: dict[str, dict[str, dict[str, float]]] = {"clean model": {}, "poisoned model": {}}
    models = {"clean model": clean_model, "poisoned model": poisoned_model}
    for label, model in models.items():
        results[label]["none/clean"] = evaluate(model, x_test, y_test)
        results[label]["none/triggered"] = evaluate(model, x_test_trig, y_test, all_test, args.target)
    t = lap("infer", t)

    defenses = {
        "spatial smoothing": SpatialSmoothing(window_size=3, clip_values=(0.0, 1.0), apply_predict=True),
        "jpeg compression": JpegCompression(clip_values=(0.0, 1.0), quality=50, channels_first=False,
                                            apply_predict=True),
        "gaussian noise": GaussianAugmentation(sigma=0.3, augmentation=False, clip_values=(0.0, 1.0),
                                               apply_predict=True),
    }
    for name, defense in defenses.items():
        np.random.seed(args.seed)
        for kind, x, trig in (("triggered", x_test_trig, all_test), ("clean", x_test, None)):
            defended = quantize(np.concatenate([defense(x[i:i + 1000])[0] for i in range(0, len(x), 1000)]))
            for label, model in models.items():
                results[label][f"{name}/{kind}"] = evaluate(model, defended, y_test, trig, args.target)
        t = lap(f"defense {name}", t)
    total = time.perf_counter() - started

    print(f"{'model':<16}{'defense':<20}{'clean acc.':>11}{'trig. acc.':>11}{'ASR':>8}")
    for label, by in results.items():
        for name in ("none", *defenses):
            c, tr = by[f"{name}/clean"], by[f"{name}/triggered"]
            print(f"{label:<16}{name:<20}{c['accuracy']:>11.3f}{tr['accuracy']:>11.3f}"
                  f"{tr['attack_success_rate']:>8.3f}")
    print(f"total {total:.1f} s; " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    if args.json:
        args.json.write_text(json.dumps({"total_s": total, "timings": timings, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
