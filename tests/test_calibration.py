"""Batch-norm recalibration, the prior correction and the packaging of the shipped model."""

from __future__ import annotations

import numpy as np
import pytest

from bloodcell.model.batchnorm import batchnorm_layers, recalibrate_batchnorm
from bloodcell.model.build import build_model


def test_recalibration_sets_moving_stats_to_the_data_statistics(sample_dataset):
    import keras

    model = build_model("custom_cnn", 8, 96, filters=[8], dense_units=8)
    x = sample_dataset.images[:64].astype("float32")
    batches = [x[:32], x[32:]]
    assert recalibrate_batchnorm(model, batches) == 2
    bn = batchnorm_layers(model)[0]
    conv = keras.Model(model.input, model.get_layer("block1_conv1").output)
    feats = np.concatenate([np.asarray(conv(b)) for b in batches])
    # moving mean = average of the two batch means = the mean over all 64 images
    np.testing.assert_allclose(
        np.asarray(bn.moving_mean), feats.mean(axis=(0, 1, 2)), rtol=3e-3, atol=1e-3
    )
    per_batch_var = np.mean([np.asarray(conv(b)).var(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), per_batch_var, rtol=1e-3, atol=1e-5)
    assert bn.momentum == 0.99  # restored
    # a second call (the compiled forward is reused) replaces the statistics with the new data's
    assert recalibrate_batchnorm(model, [x[32:]]) == 1
    np.testing.assert_allclose(
        np.asarray(bn.moving_mean),
        np.asarray(conv(x[32:])).mean(axis=(0, 1, 2)),
        rtol=3e-3,
        atol=1e-3,
    )


def test_prior_log_ratio_undoes_the_rebalancing_prior(sample_dataset):
    from bloodcell.augment.rebalance import rebalance
    from bloodcell.model.packaging import prior_log_ratio

    # an unbalanced training set: 40 of class 0, 10 of class 1, 20 of each other class
    labels = sample_dataset.labels
    take = np.concatenate(
        [np.flatnonzero(labels == c)[: {0: 40, 1: 10}.get(c, 20)] for c in range(8)]
    )
    train = rebalance(sample_dataset.subset(np.sort(take)), seed=0, group=8)
    assert np.all(np.bincount(train.labels) == 40)  # rebalanced: equal priors
    ratio = prior_log_ratio(train)
    originals = np.array([40, 10] + [20] * 6) / 170
    np.testing.assert_allclose(ratio, np.log(originals / (1 / 8)), rtol=1e-6)
    # the small class is pushed down, the large one up; nothing to undo without generated samples
    assert ratio[1] < ratio[2] < 0 < ratio[0]
    np.testing.assert_allclose(
        prior_log_ratio(sample_dataset.subset(np.sort(take))), 0.0, atol=1e-12
    )


def test_shift_logits_multiplies_the_probabilities_by_exp_shift(sample_dataset):
    from bloodcell.model.packaging import shift_logits

    model = build_model("custom_cnn", 8, 96, filters=[8], dense_units=8)
    x = sample_dataset.images[:6].astype("float32")
    before = model.predict(x, verbose=0)
    shift = np.log(np.array([4.0, 0.25, 1, 1, 1, 1, 1, 2.0]))
    shift_logits(model, shift)
    after = model.predict(x, verbose=0)
    expected = before * np.exp(shift)
    np.testing.assert_allclose(
        after, expected / expected.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6
    )
    with pytest.raises(ValueError, match="bias of shape"):
        shift_logits(model, np.zeros(3))


def test_prior_correction_outside_its_range_is_a_clear_error(sample_dataset):
    from bloodcell.model.packaging import MAX_PRIOR_CORRECTION, package_model

    model = build_model("custom_cnn", 8, 96, filters=[8], dense_units=8)
    for bad in (-0.5, MAX_PRIOR_CORRECTION + 0.5):
        with pytest.raises(
            ValueError, match=rf"prior_correction must be between 0 \(off\) and 4 .*got {bad}"
        ):
            package_model(model, sample_dataset, sample_dataset, tta=False, prior_correction=bad)
