"""Input normalisation that travels with the model: Keras layers at the model's input, saved in the
``.keras`` file, so training, ``predict``, batch inference and serving all see the same images.

``frame``: another lab's microscope, camera and cropping show the cell at another size (a cell that
fills the frame, or sits small in it). The nucleus is the densest stain in the image, in any
stain; the framing finds it by optical density and zooms the image (in or out, about the nucleus)
so that the nucleus has the same size, ``nucleus`` of the frame's side, in every image.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

INPUT_NORMS = (None, "frame")


@keras.saving.register_keras_serializable(package="bloodcell")
class CellFraming(keras.layers.Layer):
    """Zoom each image about its nucleus (the densest ``dense`` share of the optical density, and
    at least one standard deviation above its mean) so the nucleus spans ``nucleus`` of the side:
    by a factor from ``min_zoom`` (out) to ``max_zoom`` (in). Uncovered border: the image's
    median."""

    def __init__(
        self,
        nucleus: float = 0.3,
        dense: float = 0.15,
        min_zoom: float = 0.5,
        max_zoom: float = 2.5,
        **kwargs: Any,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.nucleus, self.dense, self.min_zoom, self.max_zoom = (
            float(nucleus),
            float(dense),
            float(min_zoom),
            float(max_zoom),
        )

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, "float32")
        rows, cols = (
            ops.shape(x)[1],
            ops.shape(x)[2],
        )  # dynamic where a traced batch leaves them open
        h, w = ops.cast(rows, "float32"), ops.cast(cols, "float32")
        od = -ops.sum(ops.log((x + 1.0) / 256.0), axis=-1)  # (b, h, w)
        level = ops.maximum(
            ops.quantile(od, 1.0 - self.dense, axis=[1, 2], keepdims=True),
            ops.mean(od, axis=[1, 2], keepdims=True) + ops.std(od, axis=[1, 2], keepdims=True),
        )
        mask = ops.cast(od >= level, "float32")
        area = ops.maximum(ops.sum(mask, axis=[1, 2]), 1.0)  # (b,)
        ys = ops.reshape(ops.cast(ops.arange(rows), "float32"), (1, -1, 1))
        xs = ops.reshape(ops.cast(ops.arange(cols), "float32"), (1, 1, -1))
        cy = ops.sum(mask * ys, axis=[1, 2]) / area
        cx = ops.sum(mask * xs, axis=[1, 2]) / area
        zoom = ops.clip(self.nucleus * h / ops.sqrt(area), self.min_zoom, self.max_zoom)
        inv = 1.0 / zoom
        zero = ops.zeros_like(zoom)
        # output pixel (u, v) reads the input at ((u - w/2) / zoom + cx, (v - h/2) / zoom + cy)
        transform = ops.stack(
            [inv, zero, cx - inv * (w / 2.0), zero, inv, cy - inv * (h / 2.0), zero, zero], axis=1
        )
        framed = ops.image.affine_transform(
            x, transform, interpolation="bilinear", fill_mode="constant", fill_value=0.0
        )
        covered = ops.image.affine_transform(
            ops.ones_like(x[..., :1]),
            transform,
            interpolation="bilinear",
            fill_mode="constant",
            fill_value=0.0,
        )
        return framed + (1.0 - covered) * ops.median(
            x, axis=[1, 2], keepdims=True
        )  # the border blends into the median

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "nucleus": self.nucleus,
            "dense": self.dense,
            "min_zoom": self.min_zoom,
            "max_zoom": self.max_zoom,
        }


def input_norm(x: Any, kind: str | None) -> Any:
    """``x`` (the model's input tensor) through the normalisation ``kind`` (None: unchanged)."""
    if kind not in INPUT_NORMS:
        raise ValueError(f"unknown input_norm {kind!r}; choose one of {list(INPUT_NORMS)}")
    if kind == "frame":
        x = CellFraming(name="cell_framing")(x)
    return x
