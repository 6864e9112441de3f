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
    np.testing.assert_allclose(np.asarray(bn.moving_mean), feats.mean(axis=(0, 1, 2)), rtol=3e-3, atol=1e-3)
    per_batch_var = np.mean([np.asarray(conv(b)).var(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), per_batch_var, rtol=1e-3, atol=1e-5)
    assert bn.momentum == 0.99  # restored
    # a second call (the compiled forward is reused) replaces the statistics with the new data's
    assert recalibrate_batchnorm(model, [x[32:]]) == 1
    np.testing.assert_allclose(np.asarray(bn.moving_mean), np.asarray(conv(x[32:])).mean(axis=(0, 1, 2)), rtol=3e-3, atol=1e-3)


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


def _tiny(sample_dataset, **cfg):
    tr = sample_dataset.subset(np.arange(0, 400, 4))
    va = sample_dataset.subset(np.arange(1, 400, 10))
    model = build_model("custom_cnn", 8, 96, filters=[8, 16], stem_stride=2, dense_units=16)
    return model, tr, va, TrainConfig.from_dict({"batch_size": 25, "verbose": 0, "recalibrate_samples_per_epoch": 50, **cfg})


def test_interrupted_fit_resumes_from_its_backup(sample_dataset, tmp_path):
    """BackupAndRestore: a fit killed after epoch 2 of 4 goes on from epoch 3 when run again."""
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated interruption")

    model, tr, va, cfg = _tiny(sample_dataset, epochs=4, backup_dir=str(tmp_path / "backup"))
    with pytest.raises(KeyboardInterrupt):
        train_model(model, tr, va, cfg, extra_callbacks=[Interrupt()])
    assert any((tmp_path / "backup").iterdir())
    model2, *_ = _tiny(sample_dataset)
    history = train_model(model2, tr, va, cfg)
    assert len(history["loss"]) == 2  # epochs 3 and 4 only
    assert not (tmp_path / "backup").exists() or not any((tmp_path / "backup").iterdir())  # deleted when done


def test_mixed_precision_and_mirrored_strategy_switch_on_and_off(sample_dataset):
    import keras

    from bloodcell.training import compute_scope

    _, tr, va, cfg = _tiny(sample_dataset, epochs=1, mixed_precision=True, distribute="mirrored")
    with compute_scope(cfg):
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        model = build_model("custom_cnn", 8, 96, filters=[8, 16], stem_stride=2, dense_units=16)
        history = train_model(model, tr, va, cfg)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for the next step
    assert model.get_layer("block1_conv1").compute_dtype == "float16"
    assert model.get_layer("probabilities").compute_dtype == "float32"  # softmax stays float32
    assert not np.isnan(history["loss"][0])
    with pytest.raises(ValueError, match="unknown mixed_precision 'int8'"):
        TrainConfig.from_dict({"mixed_precision": "int8"})
    with pytest.raises(ValueError, match="unknown distribute 'horovod'"):
        TrainConfig.from_dict({"distribute": "horovod"})
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        TrainConfig.from_dict({"optimizer": "sgd"})


def test_fine_tuning_trains_only_the_unfrozen_top(sample_dataset):
    from bloodcell.models import backbone_of
    from bloodcell.training import fine_tune_config, fine_tune_model

    model = build_model("efficientnetv2b0", 8, 96, weights=None)
    backbone = backbone_of(model)
    frozen_before = {w.path: np.asarray(w).copy() for w in backbone.weights if w.path.split("/")[-2].startswith("block1")}
    _, tr, va, _ = _tiny(sample_dataset)
    cfg = fine_tune_config({"epochs": 1, "batch_size": 25, "verbose": 0, "recalibrate_samples_per_epoch": 0})
    assert cfg.optimizer == "adamw" and cfg.learning_rate == 1e-5 and cfg.reduce_lr_patience == 5
    top = [w for w in backbone.weights if "top_conv" in w.path and "kernel" in w.path][0]
    top_before = np.asarray(top).copy()
    tuned, history, unfrozen = fine_tune_model(model, tr, va, blocks=1, l2=1e-4, cfg=cfg)
    assert tuned is model  # no distribution strategy: tuned in place
    assert len(history["loss"]) == 1 and unfrozen
    assert not np.array_equal(np.asarray(top), top_before)  # unfrozen: changed
    for w in backbone.weights:
        if w.path in frozen_before:
            np.testing.assert_array_equal(np.asarray(w), frozen_before[w.path])  # frozen: unchanged


def test_cosine_schedule_decays_to_the_floor(sample_dataset):
    model, tr, va, cfg = _tiny(sample_dataset, epochs=2, lr_schedule="cosine", learning_rate=1e-3, min_learning_rate=1e-5)
    train_model(model, tr, va, cfg)
    lr = model.optimizer.learning_rate  # the schedule's value at the last step
    assert float(np.asarray(lr)) == pytest.approx(1e-5, rel=1e-3)
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'"):
        TrainConfig.from_dict({"lr_schedule": "step"})


def test_prior_log_ratio_undoes_the_rebalancing_prior(sample_dataset):
    from bloodcell.augment import rebalance
    from bloodcell.training import prior_log_ratio

    # an unbalanced training set: 40 of class 0, 10 of class 1, 20 of each other class
    labels = sample_dataset.labels
    take = np.concatenate([np.flatnonzero(labels == c)[: {0: 40, 1: 10}.get(c, 20)] for c in range(8)])
    train = rebalance(sample_dataset.subset(np.sort(take)), seed=0, group=8)
    assert np.all(np.bincount(train.labels) == 40)  # rebalanced: equal priors
    ratio = prior_log_ratio(train)
    originals = np.array([40, 10] + [20] * 6) / 170
    np.testing.assert_allclose(ratio, np.log(originals / (1 / 8)), rtol=1e-6)
    # the small class is pushed down, the large one up; nothing to undo without generated samples
    assert ratio[1] < ratio[2] < 0 < ratio[0]
    np.testing.assert_allclose(prior_log_ratio(sample_dataset.subset(np.sort(take))), 0.0, atol=1e-12)


def test_shift_logits_multiplies_the_probabilities_by_exp_shift(sample_dataset):
    from bloodcell.models import shift_logits

    model = build_model("custom_cnn", 8, 96, filters=[8], dense_units=8)
    x = sample_dataset.images[:6].astype("float32")
    before = model.predict(x, verbose=0)
    shift = np.log(np.array([4.0, 0.25, 1, 1, 1, 1, 1, 2.0]))
    shift_logits(model, shift)
    after = model.predict(x, verbose=0)
    expected = before * np.exp(shift)
    np.testing.assert_allclose(after, expected / expected.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="bias of shape"):
        shift_logits(model, np.zeros(3))


def test_prior_correction_outside_its_range_is_a_clear_error(sample_dataset):
    from steps.fine_tune import MAX_PRIOR_CORRECTION, fine_tune

    model = build_model("custom_cnn", 8, 96, filters=[8], dense_units=8)
    for bad in (-0.5, MAX_PRIOR_CORRECTION + 0.5):
        with pytest.raises(ValueError, match=rf"prior_correction must be between 0 \(off\) and 4 .*got {bad}"):
            fine_tune.entrypoint(model, sample_dataset, sample_dataset, prior_correction=bad)


def test_colour_jitter_scales_each_image_within_its_range(sample_dataset):
    import tensorflow as tf

    from bloodcell.training import OnlineAugment

    x = sample_dataset.images[:32].astype("float32")
    seed = tf.constant([3, 7], tf.int64)
    bright = OnlineAugment(dihedral=False, brightness=0.3)
    y = np.asarray(bright(x, seed))
    ok = x * 1.3 < 255  # not clipped
    ratio = np.where(ok & (x > 20), y / np.maximum(x, 1), np.nan).reshape(32, -1)
    per_image = np.nanmedian(ratio, axis=1)
    assert np.all((per_image >= 0.7 - 1e-4) & (per_image <= 1.3 + 1e-4)) and per_image.std() > 0.05
    np.testing.assert_allclose(np.nanmax(ratio, axis=1), np.nanmin(ratio, axis=1), rtol=1e-4)  # one factor an image
    np.testing.assert_array_equal(y, np.asarray(bright(x, seed)))  # the same seed gives the same batch
    # saturation keeps every pixel's grey level (where nothing is clipped)
    sat = np.asarray(OnlineAugment(dihedral=False, saturation=0.5)(x, seed))
    grey = lambda im: im @ np.array([0.299, 0.587, 0.114], np.float32)  # noqa: E731
    inside = (sat > 0.5).all(-1) & (sat < 254.5).all(-1)
    np.testing.assert_allclose(grey(sat)[inside], grey(x)[inside], atol=1e-2)
    assert np.abs(sat - x).max() > 10
    with pytest.raises(ValueError, match=r"augment.contrast must be in \[0, 1\)"):
        OnlineAugment(contrast=1.5)


def test_bfloat16_trains_and_auto_follows_the_cpu_flags(sample_dataset, tmp_path):
    import keras

    from bloodcell.training import compute_scope, cpu_has_native_bfloat16

    amx, old = tmp_path / "amx", tmp_path / "old"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
    old.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert cpu_has_native_bfloat16(str(amx)) and not cpu_has_native_bfloat16(str(old))
    assert not cpu_has_native_bfloat16(str(tmp_path / "missing"))
    auto = TrainConfig.from_dict({"mixed_precision": "auto"}).compute_policy
    assert auto == ("mixed_bfloat16" if cpu_has_native_bfloat16() else "float32")
    assert TrainConfig.from_dict({"mixed_precision": True}).compute_policy == "mixed_float16"
    assert TrainConfig.from_dict({}).compute_policy == "float32"

    _, tr, va, cfg = _tiny(sample_dataset, epochs=1, mixed_precision="bfloat16")
    with compute_scope(cfg):
        model = build_model("custom_cnn", 8, 96, filters=[8, 16], stem_stride=2, dense_units=16)
        history = train_model(model, tr, va, cfg)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert not np.isnan(history["loss"][0])


def _snapshots():
    """A callback recording the trainable weights and learning rate at the end of every epoch."""
    import keras

    class Snapshots(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights, self.lr = {}, {}

        def on_epoch_end(self, epoch, logs=None):
            self.weights[epoch] = [np.asarray(w).copy() for w in self.model.trainable_weights]
            self.lr[epoch] = float(np.asarray(self.model.optimizer.learning_rate))

    return Snapshots()


def test_weight_averaging_ends_with_the_mean_of_the_last_epochs(sample_dataset):
    model, tr, va, cfg = _tiny(sample_dataset, epochs=4, swa_epochs=2, lr_schedule="cosine",
                               learning_rate=1e-3, min_learning_rate=1e-4)
    record = _snapshots()
    train_model(model, tr, va, cfg, extra_callbacks=[record])
    # the cosine reaches min_learning_rate after epochs - swa_epochs and holds it
    assert record.lr[0] > record.lr[1] and record.lr[2] == pytest.approx(1e-4) and record.lr[3] == pytest.approx(1e-4)
    for final, w2, w3 in zip(model.trainable_weights, record.weights[2], record.weights[3]):
        np.testing.assert_allclose(np.asarray(final), (w2 + w3) / 2, rtol=1e-5, atol=1e-7)
    assert not all(np.array_equal(a, b) for a, b in zip(record.weights[2], record.weights[3]))
    with pytest.raises(ValueError, match="swa_epochs 2 needs lr_schedule 'cosine'"):
        TrainConfig.from_dict({"swa_epochs": 2})
    with pytest.raises(ValueError, match="swa_epochs 4 needs"):
        TrainConfig.from_dict({"swa_epochs": 4, "epochs": 4, "lr_schedule": "cosine"})


def test_weight_averaging_survives_an_interruption(sample_dataset, tmp_path):
    """Killed at the end of epoch 3 of 4 (after its checkpoint): the resumed fit averages epoch 3,
    saved before the kill, with its own epoch 4."""
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt("simulated interruption")

    model, tr, va, cfg = _tiny(sample_dataset, epochs=4, swa_epochs=2, lr_schedule="cosine",
                               backup_dir=str(tmp_path / "backup"))
    first = _snapshots()
    with pytest.raises(KeyboardInterrupt):
        train_model(model, tr, va, cfg, extra_callbacks=[first, Interrupt()])
    assert (tmp_path / "backup" / "swa" / "weight_average.npz").exists()
    model2, *_ = _tiny(sample_dataset)
    second = _snapshots()
    history = train_model(model2, tr, va, cfg, extra_callbacks=[second])
    assert len(history["loss"]) == 1 and sorted(second.weights) == [3]
    for final, w2, w3 in zip(model2.trainable_weights, first.weights[2], second.weights[3]):
        np.testing.assert_allclose(np.asarray(final), (w2 + w3) / 2, rtol=1e-5, atol=1e-7)
    assert not (tmp_path / "backup").exists() or not any((tmp_path / "backup").rglob("*.npz"))


def _dihedral_copies(image):
    out = []
    for im in (image, image.transpose(1, 0, 2)):
        out += [im, im[:, ::-1], im[::-1], im[::-1, ::-1]]
    return out


def test_online_augmentation_rotates_or_reflects_each_image_and_noises_a_fraction(sample_dataset):
    import tensorflow as tf

    from bloodcell.training import OnlineAugment

    x = np.concatenate([sample_dataset.images] * 2)[:256]
    seed = tf.constant([5, 1], tf.int64)
    flipped = np.asarray(OnlineAugment(dihedral=True)(x, seed))
    assert flipped.dtype == np.float32
    which = [next((k for k, c in enumerate(_dihedral_copies(im)) if np.array_equal(c, out)), None)
             for im, out in zip(x.astype(np.float32), flipped)]
    assert None not in which  # every image is exactly one of its 8 rotations/reflections
    assert np.bincount(which, minlength=8).min() >= 16  # each of the 8 for some (256 images: 32 expected)
    np.testing.assert_array_equal(flipped, np.asarray(OnlineAugment(dihedral=True)(x, seed)))  # same seed, same batch
    assert not np.array_equal(flipped, np.asarray(OnlineAugment(dihedral=True)(x, seed + 1)))

    noisy = np.asarray(OnlineAugment(dihedral=False, noise_sigma_max=40.0, noise_probability=0.25)(x, seed))
    untouched = (noisy == x).reshape(len(x), -1).all(axis=1)
    assert 0.15 < 1 - untouched.mean() < 0.35  # about a quarter of the images get noise, the others none
    inside = (x > 60) & (x < 195)  # away from clipping
    sd = np.array([(noisy[i] - x[i])[inside[i]].std() for i in np.flatnonzero(~untouched)])
    assert sd.min() > 0 and sd.max() < 41 and 15 < sd.mean() < 25  # sigma ~ U(0, 40): mean 20
    assert noisy.min() >= 0 and noisy.max() <= 255
