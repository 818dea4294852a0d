"""The ``mlp`` architecture: a small fully connected network, quick to train on MNIST-sized images."""

from __future__ import annotations

from gnomon.core.registry import ModelSpec


def mlp(input_shape, n_classes):
    """Flatten - Dense256(relu) - Dropout(0.2) - Dense128(relu) - Dense(n_classes, softmax); uncompiled."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(shape=tuple(int(v) for v in input_shape)),
        layers.Flatten(name="flatten"),
        layers.Dense(256, activation="relu", name="dense_1"),
        layers.Dropout(0.2, name="dropout"),
        layers.Dense(128, activation="relu", name="dense_2"),
        layers.Dense(int(n_classes), activation="softmax", name="predictions"),
    ], name="mlp")


MLP = ModelSpec(
    name="mlp",
    summary="Multi-layer perceptron: Flatten-Dense256-Dropout-Dense128-Dense(softmax) (gnomon-feature-squeezing).",
    build=mlp,
)
