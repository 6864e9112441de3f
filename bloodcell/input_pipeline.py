"""The tf.data input pipeline: batches of float32 images for Keras, augmented online."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from bloodcell.augment.online import OnlineAugment
from bloodcell.dataset import Dataset


def make_dataset(
    ds: Dataset, batch_size: int, augment: OnlineAugment | None = None,
    shuffle: bool = False, seed: int = 0, repeat: bool = False, targets: Any = None,
) -> tf.data.Dataset:
    """Batches of (float32 images, labels), augmented by ``augment`` with a fresh seed a batch.
    ``repeat``: endless, one epoch after the other (each reshuffled), batches not crossing epochs.
    ``targets`` (arrays, or a dict of arrays, one row a sample) go in place of the labels."""
    # all the pixels in memory, sharded or not (streaming from the shards: issue 22, next)
    data = tf.data.Dataset.from_tensor_slices((np.asarray(ds.images), ds.labels if targets is None else targets))
    if shuffle:
        data = data.shuffle(len(ds), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    if repeat:
        data = data.repeat()
    if augment is not None:
        counter = tf.data.Dataset.counter()
        data = tf.data.Dataset.zip((data, counter)).map(
            lambda xy, i: (augment(xy[0], tf.stack([tf.cast(seed, tf.int64), i])), xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE,  # cores; autotuning is off (below)
        )
    else:
        data = data.map(lambda x, y: (tf.cast(x, tf.float32), y))
    # tf.data autotuning off: with it, retiring an iterator (a new epoch, the end of fit) now and
    # then stalled for ~20 s on a 2-core machine; without it, AUTOTUNE parallelism means all cores
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.prefetch(4).with_options(options)


def images_only(data: tf.data.Dataset) -> tf.data.Dataset:
    return data.map(lambda x, y: x)
