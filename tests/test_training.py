"""Model building, batch-norm recalibration and a short real fit."""

from __future__ import annotations

import numpy as np
import pytest

from bloodcell.models import build_model
from bloodcell.training import TrainConfig, batchnorm_layers, recalibrate_batchnorm, train_model


def test_model_takes_raw_pixels_and_outputs_8_probabilities(sample_dataset):
    model = build_model("custom_cnn", 8, 96, filters=[8, 16], dense_units=16)
    p = model.predict(sample_dataset.images[:4].astype("float32"), verbose=0)
    assert p.shape == (4, 8)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'"):
        build_model("resnet9", 8, 96)


def test_unknown_training_option_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})


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
    np.testing.assert_allclose(np.asarray(bn.moving_mean), feats.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
    per_batch_var = np.mean([np.asarray(conv(b)).var(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), per_batch_var, rtol=1e-3, atol=1e-5)
    assert bn.momentum == 0.99  # restored


def test_short_fit_learns_something(sample_dataset):
    from bloodcell.split import stratified_split

    tr, va, _ = stratified_split(sample_dataset)
    model = build_model("custom_cnn", 8, 96, filters=[16, 32, 64], stem_stride=2, dense_units=64)
    cfg = TrainConfig.from_dict({"epochs": 6, "batch_size": 32, "learning_rate": 3e-4, "verbose": 0,
                                 "recalibrate_samples_per_epoch": 128, "augment": {"noise_sigma_max": 20.0}})
    history = train_model(model, tr, va, cfg)
    assert len(history["loss"]) == 6 and history["loss"][-1] < history["loss"][0]
    assert not any(np.isnan(history["loss"]))
    # judged in inference mode after recalibration: clearly above chance (1/8) on its own data
    acc = (model.predict(tr.images.astype("float32"), verbose=0).argmax(1) == tr.labels).mean()
    assert acc > 0.3
