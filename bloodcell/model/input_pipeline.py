"""The tf.data input pipeline: batches of float32 images for Keras, augmented online.

A dataset whose pixels fit in ``IN_MEMORY_BYTES`` is fed from memory with a shuffle over all of
it (pbc96 at 96 px: 0.4 GB). A larger sharded one is streamed: each epoch visits its shards in a
new order, reads one shard at a time, shuffles the rows it needs from it and mixes them in a
buffer of ``SHUFFLE_BYTES``, so memory holds a shard and the buffer whatever the dataset's size."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from bloodcell.augment.online import OnlineAugment
from bloodcell.data.dataset import Dataset
from bloodcell.data.sharded_images import ShardedImages

IN_MEMORY_BYTES = 2 * 2**30
SHUFFLE_BYTES = 256 * 2**20


def streams(ds: Dataset) -> bool:
    """Whether ``make_dataset`` streams ``ds`` from its shards rather than holding its pixels."""
    return isinstance(ds.images, ShardedImages) and ds.images.nbytes > IN_MEMORY_BYTES


def _shard_stream(ds: Dataset, targets: Any, shuffle: bool, seed: int) -> Any:
    """A function of the epoch giving a tf.data.Dataset of (image, target) rows of ``ds``, shard
    by shard (in a new order each epoch when ``shuffle``), mixed in a shuffle buffer."""
    images: ShardedImages = ds.images
    part_of = images.part_of_rows()
    rows_by_part = [np.flatnonzero(part_of == k) for k in np.unique(part_of)]
    spec = tf.nest.map_structure(
        lambda a: tf.TensorSpec(np.shape(a)[1:], tf.as_dtype(np.asarray(a).dtype)), targets
    )
    buffer = max(1, SHUFFLE_BYTES // int(np.prod(images.image_shape)))

    def rows(epoch: Any):
        rng = np.random.default_rng([seed, int(epoch)])
        for p in rng.permutation(len(rows_by_part)) if shuffle else range(len(rows_by_part)):
            positions = rows_by_part[p]
            positions = rng.permutation(positions) if shuffle else positions
            pixels = images.take(positions)  # one shard read
            picked = tf.nest.map_structure(lambda a, at=positions: np.asarray(a)[at], targets)
            for i in range(0, len(positions), 256):  # chunks: far fewer Python calls than rows
                yield (
                    pixels[i : i + 256],
                    tf.nest.map_structure(lambda a, at=i: a[at : at + 256], picked),
                )

    def epoch_data(epoch: Any) -> tf.data.Dataset:
        chunk = tf.nest.map_structure(lambda t: tf.TensorSpec((None, *t.shape), t.dtype), spec)
        data = tf.data.Dataset.from_generator(
            rows,
            args=(epoch,),
            output_signature=(tf.TensorSpec((None, *images.image_shape), tf.uint8), chunk),
        ).unbatch()
        return data.shuffle(buffer, seed=seed) if shuffle else data

    return epoch_data


def make_dataset(
    ds: Dataset,
    batch_size: int,
    augment: OnlineAugment | None = None,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
    targets: Any = None,
) -> tf.data.Dataset:
    """Batches of (float32 images, labels), augmented by ``augment`` with a fresh seed a batch.
    ``repeat``: endless, one epoch after the other (each reshuffled), batches not crossing epochs.
    ``targets`` (arrays, or a dict of arrays, one row a sample) go in place of the labels."""
    targets = ds.labels if targets is None else targets
    if streams(ds):
        epoch_data = _shard_stream(ds, targets, shuffle, seed)
        epochs = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(1)
        data = epochs.flat_map(
            lambda e: epoch_data(e).batch(batch_size)
        )  # batches never cross epochs
    else:
        data = tf.data.Dataset.from_tensor_slices((np.asarray(ds.images), targets))
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
