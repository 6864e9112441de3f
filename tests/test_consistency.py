"""Consistency training's pieces (bloodcell/consistency.py): the stacked views of a batch and the
Jensen-Shannon loss on them."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from bloodcell.augment.online import OnlineAugment
from bloodcell.consistency import ConsistencyLoss, stacked_views
from bloodcell.dihedral import COUNT, transform


def test_a_batch_becomes_its_clean_view_then_augmented_views(sample_dataset):
    images = sample_dataset.images[:6]
    labels = np.eye(8, dtype=np.float32)[sample_dataset.labels[:6]]
    augment = OnlineAugment(stain=0.3, brightness=0.2, noise_sigma_max=20.0, noise_probability=1.0)
    stacked, repeated = stacked_views(augment, views=2)(tf.constant(images), tf.constant(labels), tf.constant([0, 7], tf.int64))
    stacked = stacked.numpy()
    assert stacked.shape == (18, 96, 96, 3) and np.array_equal(repeated.numpy(), np.concatenate([labels] * 3))
    clean, first, second = stacked[:6], stacked[6:12], stacked[12:]
    for original, view in zip(images, clean):  # rotated or reflected, nothing else
        assert any(np.array_equal(transform(original[None], k, np)[0], view) for k in range(COUNT))
    assert np.abs(first - clean).mean() > 3 and np.abs(second - clean).mean() > 3 and np.abs(second - first).mean() > 3
    again, _ = stacked_views(augment, views=2)(tf.constant(images), tf.constant(labels), tf.constant([0, 7], tf.int64))
    assert np.array_equal(again.numpy(), stacked)  # seeded


def _per_image(clean, views, y, weight, smoothing=0.0):
    probs = [np.clip(p, 1e-7, 1.0) for p in (clean, *views)]
    target = y * (1 - smoothing) + smoothing / y.shape[1]
    ce = -(target * np.log(probs[0])).sum(1)
    mixture = sum(probs) / len(probs)
    js = sum((p * (np.log(p) - np.log(mixture))).sum(1) for p in probs) / len(probs)
    return ce + weight * js


def test_the_loss_is_clean_cross_entropy_plus_the_views_divergence():
    rng = np.random.default_rng(0)
    y = np.eye(4, dtype=np.float32)[[0, 2, 3]]

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    clean, a, b = (softmax(rng.normal(size=(3, 4)) * 2) for _ in range(3))
    loss = ConsistencyLoss(views=2, weight=12.0, label_smoothing=0.1)
    stacked_y = np.concatenate([y] * 3)
    value = float(loss(stacked_y, np.concatenate([clean, a, b])))
    assert value == pytest.approx(_per_image(clean, [a, b], y, 12.0, 0.1).mean(), rel=1e-5)
    same = float(loss(stacked_y, np.concatenate([clean, clean, clean])))  # views that agree: only the clean view's CE
    assert same == pytest.approx(_per_image(clean, [], y, 0.0, 0.1).mean(), rel=1e-5) and value > same
    assert ConsistencyLoss.from_config(loss.get_config()).weight == 12.0
