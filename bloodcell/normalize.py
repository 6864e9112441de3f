"""Input normalisation that travels with the model: Keras layers at the model's input, saved in the
``.keras`` file, so training, ``predict``, batch inference and serving all see the same images.

``background``: a per-image white balance. A smear's background (plasma and red cells) is the
brightest part of the image; its colour says what the lab's stain, lamp and camera do to white.
Each channel is divided by its ``quantile`` (the background's level) and brought to ``target``,
so a yellow or blue cast and the overall exposure are undone before the network sees the image.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

INPUT_NORMS = (None, "background")


@keras.saving.register_keras_serializable(package="bloodcell")
class BackgroundBalance(keras.layers.Layer):
    """Per image and channel: x * target / quantile(x). Input and output on the 0..255 scale."""

    def __init__(self, quantile: float = 0.9, target: float = 230.0, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")  # statistics in float32 whatever the policy
        super().__init__(**kwargs)
        self.quantile, self.target = float(quantile), float(target)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, "float32")
        level = ops.quantile(x, self.quantile, axis=[1, 2], keepdims=True)
        return ops.clip(x * (self.target / ops.maximum(level, 1.0)), 0.0, 255.0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "quantile": self.quantile, "target": self.target}


def input_norm(x: Any, kind: str | None) -> Any:
    """``x`` (the model's input tensor) through the normalisation ``kind`` (None: unchanged)."""
    if kind not in INPUT_NORMS:
        raise ValueError(f"unknown input_norm {kind!r}; choose one of {list(INPUT_NORMS)}")
    if kind == "background":
        return BackgroundBalance(name="background_balance")(x)
    return x
