"""Training helpers: fractional epochs, the progress/metrics Keras callback, early stopping."""

from __future__ import annotations


def total_steps(epochs: float, steps_per_epoch: int) -> int:
    """Batches a run of ``epochs`` (possibly fractional) takes: the progress bar's total."""
    n_epochs, last_steps = _epoch_plan(epochs, steps_per_epoch)
    return (n_epochs - 1) * steps_per_epoch + last_steps


def _epoch_plan(epochs: float, steps_per_epoch: int) -> tuple[int, int]:
    import math

    full = int(math.floor(float(epochs) + 1e-9))
    frac = float(epochs) - full
    if frac > 1e-9:
        return full + 1, min(steps_per_epoch, max(1, int(round(frac * steps_per_epoch))))
    return max(full, 1), steps_per_epoch


def training_callback(ctx, advance, *, epochs: float, steps_per_epoch: int, log_prefix: str = ""):
    """A Keras callback: advances a rich bar per batch, logs per-epoch curves, honours fractional epochs.

    Use it inside ``with ctx.progress("training", total=total_steps(...)) as advance``.
    ``epochs`` may be fractional: the last epoch stops after ``round(frac * steps_per_epoch)``
    batches (at least one). Per-epoch metrics are logged as ``{log_prefix}train_<metric>`` and
    ``{log_prefix}val_<metric>`` with ``step`` = epoch number (1-based), plus the epoch's wall
    time (training and validation) as ``{log_prefix}epoch_time_s`` and the process CPU time it
    took as ``{log_prefix}epoch_cpu_time_s`` (robust to other load on the machine).
    """
    import time

    import keras

    n_epochs, last_steps = _epoch_plan(epochs, steps_per_epoch)

    class _GnomonTraining(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._epoch = 0
            self.steps = 0
            self._epoch_started = time.perf_counter()
            self._epoch_cpu = time.process_time()
            self.epochs_logged: list[int] = []
            self.epoch_times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch
            self._epoch_started = time.perf_counter()
            self._epoch_cpu = time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            advance(1)
            if self._epoch >= n_epochs - 1 and batch + 1 >= last_steps:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self._epoch_started
            cpu_seconds = time.process_time() - self._epoch_cpu
            self.epochs_logged.append(epoch + 1)
            self.epoch_times.append(seconds)
            if not logs or not ctx.run_id:
                return
            metrics = {f"{log_prefix}epoch_time_s": seconds, f"{log_prefix}epoch_cpu_time_s": cpu_seconds}
            for key, value in logs.items():
                if key == "learning_rate":
                    continue
                val = key.startswith("val_")
                metrics[f"{log_prefix}{'val' if val else 'train'}_{key[4:] if val else key}"] = float(value)
            ctx.log_metrics(metrics, step=epoch + 1)

    return _GnomonTraining()


def epochs_to_run(epochs: float) -> int:
    """How many (possibly partial) epochs Keras must be told to run for a float ``epochs``."""
    import math

    return max(1, int(math.ceil(float(epochs) - 1e-9)))


def early_stopping(patience: int, *, monitor: str, min_delta: float = 0.0):
    """A Keras EarlyStopping callback restoring the best weights, or ``None`` when ``patience`` is 0."""
    if not patience:
        return None
    import keras

    return keras.callbacks.EarlyStopping(monitor=monitor, patience=int(patience), min_delta=float(min_delta),
                                         restore_best_weights=True, verbose=0)
