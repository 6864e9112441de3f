"""The custom CNN for CPUs: conv + normalisation blocks, global average pooling, dense + dropout.
Its normalisation is batch norm or group norm (optionally after weight-standardised convs)."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from bloodcell.model import normalize


def build_custom_cnn(
    num_classes: int = 8,
    image_size: int = 96,
    filters: tuple[int, ...] | list[int] = (32, 64, 128, 256),
    convs_per_block: int = 2,
    stem_stride: int = 2,
    dense_units: int = 256,
    dropout: float = 0.3,
    l2: float = 0.0,
    input_norm: str | None = None,
    norm: str = "batch",
    name: str = "custom_cnn",
) -> keras.Model:
    """Conv + batch-norm blocks, global average pooling, dense + dropout, softmax.

    Each block is ``convs_per_block`` x (3x3 conv -> batch norm -> ReLU) followed by 2x2 max
    pooling. ``stem_stride`` 2 makes the first conv a strided one (a quarter of the compute).
    ``norm``: ``batch`` (batch norm), or ``group`` (group norm, 8 channels a group: no batch
    statistics, so nothing in the model depends on which images were batched together).
    Preprocessing (``input_norm``: ``bloodcell.model.normalize``; scaling 0..255 to 0..1) is
    inside the model, so it takes raw pixels.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
    reg = keras.regularizers.L2(l2) if l2 else None
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(normalize.input_norm(inputs, input_norm))
    for b, f in enumerate(filters):
        for c in range(convs_per_block):
            stride = stem_stride if (b == 0 and c == 0) else 1
            x = (StandardizedConv2D if norm == "group_ws" else layers.Conv2D)(
                f,
                3,
                strides=stride,
                padding="same",
                use_bias=False,
                kernel_regularizer=reg,
                name=f"block{b + 1}_conv{c + 1}",
            )(x)
            x = _norm_layer(
                norm, f, name=f"block{b + 1}_{'bn' if norm == 'batch' else 'gn'}{c + 1}"
            )(x)
            x = layers.ReLU(name=f"block{b + 1}_relu{c + 1}")(x)
        if b < len(filters) - 1:
            x = layers.MaxPooling2D(2, name=f"block{b + 1}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="head_dropout1")(x)
    x = layers.Dense(dense_units, activation="relu", kernel_regularizer=reg, name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout2")(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name=name)


NORMS = ("batch", "group", "group_ws")


@keras.saving.register_keras_serializable(package="bloodcell")
class StandardizedConv2D(layers.Conv2D):
    """Conv2D with weight standardisation (Qiao et al. 2019): each filter's kernel is used with zero
    mean and unit variance over its inputs, which makes group norm train like batch norm."""

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        mean = keras.ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        var = keras.ops.var(kernel, axis=(0, 1, 2), keepdims=True)
        return super().convolution_op(inputs, (kernel - mean) / keras.ops.sqrt(var + 1e-5))


def _norm_layer(norm: str, channels: int, name: str) -> keras.layers.Layer:
    if norm.startswith("group"):
        return layers.GroupNormalization(groups=max(1, channels // 8), epsilon=1e-5, name=name)
    return layers.BatchNormalization(name=name)
