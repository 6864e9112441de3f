"""Batch-norm statistics of a trained model: augmented training images have other statistics
than clean ones, so the moving averages that batch norm gathers during training misfit the images
the model is judged on. ``recalibrate_batchnorm`` recomputes them as the average batch statistics
over given batches: the train step does it before every validation (on a subset of the training
originals) and at the end. (The prior shift that ``fine_tune`` applies is in
``bloodcell.model.packaging``.)"""

from __future__ import annotations

import weakref
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bloodcell.augment.online import OnlineAugment
from bloodcell.data.dataset import Dataset
from bloodcell.model.build import all_layers
from bloodcell.model.input_pipeline import images_only, make_dataset


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The trainable batch-norm layers anywhere in ``model`` (nested models included)."""
    return [
        layer
        for layer in all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


_FORWARD: weakref.WeakKeyDictionary[keras.Model, Any] = weakref.WeakKeyDictionary()


def _training_forward(model: keras.Model):
    """``model(x, training=True)`` as one compiled function a model, traced (once) while every
    batch-norm momentum is 0, so each call leaves the batch's own statistics in the moving
    averages. The training step's compiled function is not affected: it was traced with the real
    momentum, which is a Python float read only when tracing."""
    if model not in _FORWARD:
        ref = weakref.ref(model)  # the cached function must not keep its key (the model) alive
        _FORWARD[model] = tf.function(lambda x: ref()(x, training=True), reduce_retracing=True)
    return _FORWARD[model]


def recalibrate_batchnorm(model: keras.Model, batches: Any) -> int:
    """Recompute the moving mean/variance of every trainable BatchNormalization layer as the
    average over ``batches`` (an iterable of float image batches) of the batch statistics.
    Returns the batch count; with no batches the statistics are left as they were."""
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    means = [np.zeros(bn.moving_mean.shape, np.float64) for bn in bns]
    variances = [np.zeros(bn.moving_variance.shape, np.float64) for bn in bns]
    k = 0
    try:
        for bn in bns:
            bn.momentum = 0.0
        forward = _training_forward(model)
        for batch in batches:
            forward(batch)
            for bn, m, v in zip(bns, means, variances):
                m += np.asarray(bn.moving_mean)
                v += np.asarray(bn.moving_variance)
            k += 1
        if k:
            for bn, m, v in zip(bns, means, variances):
                bn.moving_mean.assign((m / k).astype(np.float32))
                bn.moving_variance.assign((v / k).astype(np.float32))
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
    return k


def recalibrate_on(
    model: keras.Model,
    originals: Dataset,
    samples: int,
    augment: OnlineAugment | None,
    seed: int,
    batch_size: int = 256,
) -> int:
    """Batch norm recomputed on ``samples`` of ``originals`` (0: all; drawn with ``seed``), passed
    through ``augment``. Returns the batch count."""
    picked = originals.sample(samples, seed)
    return recalibrate_batchnorm(
        model, images_only(make_dataset(picked, batch_size, augment, seed=seed))
    )


class RecalibrateEachEpoch(keras.callbacks.Callback):
    """Recalibrate batch norm on a subset of clean originals just before each validation."""

    def __init__(
        self, originals: Dataset, samples: int, batch_size: int, augment: OnlineAugment, seed: int
    ):
        super().__init__()
        self.data = images_only(
            make_dataset(originals.sample(samples, seed), batch_size, augment, seed=seed)
        )

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        steps = self.params.get("steps")
        if steps and batch == steps - 1:
            recalibrate_batchnorm(self.model, self.data)
