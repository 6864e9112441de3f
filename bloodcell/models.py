"""Model builders. Every model takes RGB images with values 0..255 and outputs 8 probabilities."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers


def build_custom_cnn(
    num_classes: int = 8,
    image_size: int = 96,
    filters: tuple[int, ...] | list[int] = (32, 64, 128, 256),
    convs_per_block: int = 2,
    stem_stride: int = 1,
    dense_units: int = 256,
    dropout: float = 0.3,
    l2: float = 0.0,
    name: str = "custom_cnn",
) -> keras.Model:
    """Conv + batch-norm blocks, global average pooling, dense + dropout, softmax.

    Each block is ``convs_per_block`` x (3x3 conv -> batch norm -> ReLU) followed by 2x2 max
    pooling. Preprocessing (scaling 0..255 to 0..1) is inside the model, so it takes raw pixels.
    """
    reg = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for b, f in enumerate(filters):
        for c in range(convs_per_block):
            stride = stem_stride if (b == 0 and c == 0) else 1
            x = layers.Conv2D(
                f, 3, strides=stride, padding="same", use_bias=False,
                kernel_regularizer=reg, name=f"block{b + 1}_conv{c + 1}",
            )(x)
            x = layers.BatchNormalization(name=f"block{b + 1}_bn{c + 1}")(x)
            x = layers.ReLU(name=f"block{b + 1}_relu{c + 1}")(x)
        if b < len(filters) - 1:
            x = layers.MaxPooling2D(2, name=f"block{b + 1}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="head_dropout1")(x)
    x = layers.Dense(dense_units, activation="relu", kernel_regularizer=reg, name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout2")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


BUILDERS = {"custom_cnn": build_custom_cnn}


def build_model(architecture: str, num_classes: int, image_size: int, **kwargs: Any) -> keras.Model:
    """Build the model named ``architecture`` with the given keyword arguments."""
    try:
        builder = BUILDERS[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {sorted(BUILDERS)}"
        ) from None
    return builder(num_classes=num_classes, image_size=image_size, **kwargs)
