"""Consistency training (AugMix's Jensen-Shannon loss, Hendrycks et al., ICLR 2020): each training
image is seen as a clean view (only its rotation/reflection) and as ``views`` augmented views
(the rest of the online augmentation: noise, stain, colour, zoom, blur, JPEG, each view drawn
afresh). The loss is the cross-entropy of the clean view plus ``weight`` times the Jensen-Shannon
divergence between the views' predicted distributions, so the augmentation teaches invariance
without pulling the clean predictions towards augmented images.

A batch is the views stacked along the batch axis, ``[clean; augmented 1; ...]``, so Keras'
``fit`` and the model stay as they are; the labels are repeated for the accuracy metric.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from bloodcell.augment.online import OnlineAugment


def stacked_views(augment: OnlineAugment, views: int):
    """A batch function ``(images, labels, seed) -> (views + 1 stacked images, repeated labels)``:
    the clean view (rotation/reflection only) first, then ``views`` augmented ones of it."""
    base = dataclasses.replace(OnlineAugment(), dihedral=augment.dihedral, noise_sigma_max=0.0)
    heavy = dataclasses.replace(augment, dihedral=False)

    def apply(images: tf.Tensor, labels: Any, seed: tf.Tensor):
        seeds = tf.random.experimental.stateless_split(seed, views + 1)
        clean = base(images, seeds[0])
        stacked = tf.concat([clean, *(heavy(clean, seeds[i + 1]) for i in range(views))], axis=0)
        return stacked, tf.nest.map_structure(lambda y: tf.concat([y] * (views + 1), axis=0), labels)

    return apply


@keras.saving.register_keras_serializable(package="bloodcell")
class ConsistencyLoss(keras.losses.Loss):
    """Cross-entropy of the clean view (the first of ``views + 1`` equal parts of the batch) plus
    ``weight`` x the Jensen-Shannon divergence of all views' predictions. Per-sample values are
    laid out so that Keras' mean over the stacked batch is the mean over the original images."""

    def __init__(self, views: int = 2, weight: float = 12.0, label_smoothing: float = 0.0, name: str = "consistency", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.views, self.weight, self.label_smoothing = int(views), float(weight), float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        parts = self.views + 1
        n = ops.shape(y_pred)[0] // parts
        probs = [ops.clip(ops.cast(y_pred[i * n:(i + 1) * n], "float32"), 1e-7, 1.0) for i in range(parts)]
        ce = keras.losses.categorical_crossentropy(y_true[:n], probs[0], label_smoothing=self.label_smoothing)
        mixture = sum(probs) / parts
        js = sum(ops.sum(p * (ops.log(p) - ops.log(mixture)), axis=-1) for p in probs) / parts
        per_image = (ce + self.weight * js) * parts
        return ops.concatenate([per_image, ops.zeros((n * self.views,), dtype=per_image.dtype)], axis=0)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "views": self.views, "weight": self.weight, "label_smoothing": self.label_smoothing}
