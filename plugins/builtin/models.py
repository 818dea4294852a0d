"""Builtin part: the model zoo (le_net, shallow_net, alex_net, resnet50, vgg16).

Every builder takes ``(input_shape, n_classes)`` with images in NHWC layout scaled to [0, 1]
and returns an uncompiled Keras model. Architectures that cannot work at MNIST size adapt
inside the model: a ``Resizing`` layer up-samples small images to the architecture's minimum
and, for the ImageNet architectures, a ``Concatenate`` layer replicates a grayscale channel to
RGB. Adapter layers are only added when needed, so layer indices (``feature_layer_index``)
depend on the input shape; ``gnomon models show NAME [--input-shape H,W,C]`` prints them and
docs/models.md lists them for MNIST (28x28x1).
"""

from __future__ import annotations

from gnomon.core.hookspecs import hookimpl
from gnomon.core.registry import ModelSpec

#: Smallest spatial size each architecture works at (inputs below are resized up).
MIN_SIZE = {"alex_net": 64, "resnet50": 32, "vgg16": 32}


def _resize_target(input_shape, minimum: int) -> tuple[int, int] | None:
    h, w = int(input_shape[0]), int(input_shape[1])
    if h >= minimum and w >= minimum:
        return None
    return max(h, minimum), max(w, minimum)


def le_net(input_shape, n_classes):
    """Dioptra's le_net: Conv32-Conv64-MaxPool-Dropout-Flatten-Dense128-Dropout-Dense(softmax)."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(shape=tuple(input_shape)),
        layers.Conv2D(32, (3, 3), activation="relu", name="conv2d_1"),
        layers.Conv2D(64, (3, 3), activation="relu", name="conv2d_2"),
        layers.MaxPooling2D((2, 2), name="max_pooling2d"),
        layers.Dropout(0.25, name="dropout_1"),
        layers.Flatten(name="flatten"),
        layers.Dense(128, activation="relu", name="dense_1"),
        layers.Dropout(0.5, name="dropout_2"),
        layers.Dense(n_classes, activation="softmax", name="predictions"),
    ], name="le_net")


def shallow_net(input_shape, n_classes):
    """Dioptra's shallow_net: Flatten-Dense32(sigmoid)-Dense(softmax)."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input(shape=tuple(input_shape)),
        layers.Flatten(name="flatten"),
        layers.Dense(32, activation="sigmoid", name="dense_1"),
        layers.Dense(n_classes, activation="softmax", name="predictions"),
    ], name="shallow_net")


def alex_net(input_shape, n_classes):
    """AlexNet (Krizhevsky et al. 2012, without LRN): five convolutions, three max-pools, two Dense4096.

    Works at any size: images smaller than 64x64 are resized to 64x64 inside the model
    (the first layer is then ``Resizing``).
    """
    import keras
    from keras import layers

    stack = [keras.Input(shape=tuple(input_shape))]
    target = _resize_target(input_shape, MIN_SIZE["alex_net"])
    if target:
        stack.append(layers.Resizing(*target, interpolation="bilinear", name="resize"))
    stack += [
        layers.Conv2D(96, (11, 11), strides=4, padding="same", activation="relu", name="conv2d_1"),
        layers.MaxPooling2D((3, 3), strides=2, name="max_pooling2d_1"),
        layers.Conv2D(256, (5, 5), padding="same", activation="relu", name="conv2d_2"),
        layers.MaxPooling2D((3, 3), strides=2, name="max_pooling2d_2"),
        layers.Conv2D(384, (3, 3), padding="same", activation="relu", name="conv2d_3"),
        layers.Conv2D(384, (3, 3), padding="same", activation="relu", name="conv2d_4"),
        layers.Conv2D(256, (3, 3), padding="same", activation="relu", name="conv2d_5"),
        layers.MaxPooling2D((3, 3), strides=2, name="max_pooling2d_3"),
        layers.Flatten(name="flatten"),
        layers.Dense(4096, activation="relu", name="dense_1"),
        layers.Dropout(0.5, name="dropout_1"),
        layers.Dense(4096, activation="relu", name="dense_2"),
        layers.Dropout(0.5, name="dropout_2"),
        layers.Dense(n_classes, activation="softmax", name="predictions"),
    ]
    return keras.Sequential(stack, name="alex_net")


def adapt_input(input_shape, minimum: int, *, channels: int = 3):
    """``(inputs, x)``: a Keras input plus the layers making it >= ``minimum`` pixels and ``channels`` deep.

    Grayscale images are replicated to three channels (``Concatenate``); small images are
    resized with a ``Resizing`` layer. Used by the ImageNet architectures and ``init_model``.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    target = _resize_target(input_shape, minimum)
    if target:
        x = layers.Resizing(*target, interpolation="bilinear", name="resize")(x)
    c = int(input_shape[-1])
    if c == 1 and channels == 3:
        x = layers.Concatenate(axis=-1, name="gray_to_rgb")([x, x, x])
    elif c != channels:
        raise ValueError(f"cannot adapt {c}-channel images to {channels} channels")
    return inputs, x


def _application(app_name: str, input_shape, n_classes: int):
    """keras.applications model built on the adapted input, so its layers are the model's own (flat)."""
    import keras

    inputs, x = adapt_input(input_shape, MIN_SIZE[app_name])
    app = {"resnet50": keras.applications.ResNet50, "vgg16": keras.applications.VGG16}[app_name]
    model = app(include_top=True, weights=None, input_tensor=x, input_shape=tuple(int(v) for v in x.shape[1:]),
                classes=int(n_classes), classifier_activation="softmax", name=app_name)
    # keras.applications makes the inputs a list; re-wrap (same layers) so a plain tensor is the input
    return keras.Model(inputs, model.outputs[0], name=app_name)


def resnet50(input_shape, n_classes):
    """keras.applications ResNet50 (random init) with its own n-class softmax top.

    Inputs smaller than 32x32 are resized to 32x32 and grayscale is replicated to RGB inside
    the model. Its layers are flat (``image`` input, adapters, then ResNet50's own layers), so
    attacks can name any of them by index.
    """
    return _application("resnet50", input_shape, n_classes)


def vgg16(input_shape, n_classes):
    """keras.applications VGG16 (random init) with its own n-class softmax top; adapts like resnet50."""
    return _application("vgg16", input_shape, n_classes)


@hookimpl
def register_models(register):
    """Register the five builtin architectures."""
    register(ModelSpec("le_net", "LeNet-style CNN as in Dioptra (2 conv, max-pool, dropout, Dense128).", le_net))
    register(ModelSpec("shallow_net", "Flatten, Dense32 (sigmoid), softmax: Dioptra's shallow_net.", shallow_net))
    register(ModelSpec("alex_net", "AlexNet (5 conv, 3 pools, 2x Dense4096); resizes inputs below 64x64.",
                       alex_net))
    register(ModelSpec("resnet50", "keras.applications ResNet50, random init; resizes to >=32x32, gray->RGB.",
                       resnet50))
    register(ModelSpec("vgg16", "keras.applications VGG16, random init; resizes to >=32x32, gray->RGB.", vgg16))
