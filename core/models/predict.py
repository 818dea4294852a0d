"""Predictions in batches with a progress bar, remembered per model (content-keyed)."""

from __future__ import annotations

_PREDICTIONS_PER_MODEL = 8
#: attribute holding a model's remembered predictions (they live and die with the model object)
_ATTRIBUTE = "_gnomon_predictions"


def _prediction_key(model, x, batch_size: int) -> str:
    """sha256 of the model's weights, the input bytes, shape and dtype, and the batch size.

    Content, not identity: a model trained further or an array changed in place gets a new key,
    so a remembered prediction is only ever reused for exactly the same computation.
    """
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).data)
    arr = np.ascontiguousarray(x)
    h.update(repr((arr.shape, str(arr.dtype), int(batch_size))).encode())
    h.update(arr.data)
    return h.hexdigest()


def predict(model, x, batch_size: int = 256, ctx=None):
    """Class probabilities for ``x`` (NHWC float32), in batches; with ``ctx``, a rich progress bar.

    The same model (same weights) on the same images (same bytes) is predicted once per
    process: a workflow's ``train`` step and a later ``infer`` of that model on the clean test
    set share the forward pass. ``GNOMON_MODEL_MEMO=0`` turns this off with the model memo.
    Callers get their own copy of the probabilities.
    """
    import numpy as np

    from ..memo import LRU

    memo = None
    if _model_memo_capacity() > 0:
        key = _prediction_key(model, x, batch_size)
        memo = getattr(model, _ATTRIBUTE, None)
        if memo is None:
            memo = LRU(lambda: _PREDICTIONS_PER_MODEL)
            try:
                setattr(model, _ATTRIBUTE, memo)
            except AttributeError:  # an object that takes no attributes: no memo
                pass
        remembered = memo.get(key)
        if remembered is not None:
            return remembered.copy()
    if ctx is None:
        probs = np.asarray(model.predict(x, batch_size=int(batch_size), verbose=0), dtype=np.float32)
    else:
        import keras

        with ctx.progress("predicting", total=-(-len(x) // int(batch_size))) as advance:
            class _Advance(keras.callbacks.Callback):
                def on_predict_batch_end(self, batch, logs=None):
                    advance(1)

            probs = np.asarray(model.predict(x, batch_size=int(batch_size), verbose=0, callbacks=[_Advance()]),
                               dtype=np.float32)
    if memo is not None:
        memo.put(key, probs.copy())
    return probs


def _model_memo_capacity() -> int:
    """``GNOMON_MODEL_MEMO``: how many loaded models to keep (default 4; 0 turns the memos off)."""
    from .. import settings

    return settings.model_memo()
