"""Reference for bench_train.py: le_net on MNIST with nothing but NumPy and Keras.

Same model as gnomon's ``le_net``, same optimiser, loss, metrics, batch size, validation
fraction and test set as ``gnomon run train``; reads the IDX files directly. Prints one JSON
line: per-epoch wall times (training + validation, like gnomon's ``epoch_time_s``) and the
test metrics.

    python benchmarks/plain_keras_train.py --mnist ../shared/data/mnist --epochs 5 --batch-size 32
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path


def read_idx(path: Path):
    import numpy as np

    data = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if int.from_bytes(data[2:4], "big") == 0x0803:
        n, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)
    return np.frombuffer(data, np.uint8, offset=8)


def find(folder: Path, base: str) -> Path:
    for name in (base, base + ".gz", base.replace("-idx", ".idx")):
        if (folder / name).exists():
            return folder / name
    raise SystemExit(f"{base}(.gz) not found in {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deterministic", action="store_true",
                        help="also call tf.config.experimental.enable_op_determinism() (as gnomon's seeding does)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import keras
    import numpy as np
    from keras import layers

    keras.utils.set_random_seed(args.seed)
    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    folder = Path(args.mnist)
    x = read_idx(find(folder, "train-images-idx3-ubyte"))[..., None].astype(np.float32) / 255.0
    y = read_idx(find(folder, "train-labels-idx1-ubyte")).astype(np.int64)
    x_test = read_idx(find(folder, "t10k-images-idx3-ubyte"))[..., None].astype(np.float32) / 255.0
    y_test = read_idx(find(folder, "t10k-labels-idx1-ubyte")).astype(np.int64)
    order = np.random.default_rng(args.seed).permutation(len(x))
    n_val = int(round(len(x) * args.validation_split))
    val, train = order[:n_val], order[n_val:]
    eye = np.eye(10, dtype=np.float32)

    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001), loss="categorical_crossentropy",
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"), keras.metrics.Precision(name="precision"),
                           keras.metrics.Recall(name="recall"), keras.metrics.AUC(name="auc")])

    times: list[float] = []
    cpu_times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)
            cpu_times.append(time.process_time() - self.c)

    validation = (x[val], eye[y[val]]) if n_val else None
    model.fit(x[train], eye[y[train]], batch_size=args.batch_size, epochs=args.epochs, validation_data=validation,
              shuffle=True, callbacks=[Timer()], verbose=0)
    test = model.evaluate(x_test, eye[y_test], batch_size=256, verbose=0, return_dict=True)
    print(json.dumps({"epoch_times_s": times, "epoch_cpu_times_s": cpu_times, "test": {k: float(v) for k, v in test.items()},
                      "n_train": int(len(train)), "n_validation": int(n_val)}))


if __name__ == "__main__":
    main()
