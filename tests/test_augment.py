"""Augmentation: rebalancing (RandAugment + AugMix, materialised) and the online transforms."""

from __future__ import annotations

import numpy as np
import pytest

from bloodcell.augment.rebalance import geometric, rebalance
from bloodcell.data.dataset import is_generated, source_id


def test_rebalance_brings_every_class_to_the_largest(sample_dataset):
    # make it imbalanced: keep 20 of each class but 40 neutrophils
    keep = []
    for c in range(8):
        members = np.flatnonzero(sample_dataset.labels == c)
        keep += list(members[: 40 if c == 6 else 20])
    train = sample_dataset.subset(sorted(keep))
    out = rebalance(train, seed=3)
    assert set(out.class_counts().values()) == {40}
    assert out.ids[: len(train)] == train.ids and np.array_equal(
        out.images[: len(train)], train.images
    )
    generated = out.ids[len(train) :]
    assert len(generated) == 7 * 20 and len(set(generated)) == len(generated)
    for gid, label in zip(generated, out.labels[len(train) :]):
        assert is_generated(gid) and gid.startswith(source_id(gid))
        assert (
            train.labels[train.ids.index(source_id(gid))] == label
        )  # the source is an original of the same class
    gen = out.images[len(train) :]
    assert gen.dtype == np.uint8 and gen.shape[1:] == (96, 96, 3)
    assert not any(
        np.array_equal(g, train.images[train.ids.index(source_id(i))])
        for g, i in zip(gen, generated)
    )
    assert out.originals().ids == train.ids
    assert out.info["generated"] == 140


def test_multiplier(sample_dataset):
    train = sample_dataset.subset(np.flatnonzero(sample_dataset.labels < 2)[:60])
    out = rebalance(train, multiplier=1.5, seed=0)
    largest = max(train.class_counts()[c] for c in ("basophil", "eosinophil"))
    assert (
        out.class_counts()["basophil"] == out.class_counts()["eosinophil"] == round(1.5 * largest)
    )


def test_geometric_is_a_dihedral_copy(sample_dataset):
    imgs = sample_dataset.images[:16]
    out = geometric(imgs, np.random.default_rng(0))
    for a, b in zip(imgs, out):
        variants = [np.rot90(v, k) for v in (a, a[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(b, v) for v in variants)


def test_keras_cv_engine_is_selectable(sample_dataset):
    from bloodcell.augment.rebalance import augment_images

    out = augment_images(sample_dataset.images[:8], engine="keras_cv", seed=1)
    assert out.shape == (8, 96, 96, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, sample_dataset.images[:8])


def test_unknown_engine_is_a_clear_error(sample_dataset):
    import pytest

    from bloodcell.augment.rebalance import augment_images

    with pytest.raises(ValueError, match="unknown augmentation engine 'albumentations'"):
        augment_images(sample_dataset.images[:2], engine="albumentations")


def test_rebalance_is_bitwise_deterministic(sample_dataset):
    train = sample_dataset.subset(np.flatnonzero(sample_dataset.labels < 3)[:70])
    a = rebalance(train, seed=7)
    b = rebalance(train, seed=7)
    c = rebalance(train, seed=8)
    assert a.ids == b.ids and a.fingerprint == b.fingerprint
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images[len(train) :], c.images[len(train) :])


def test_small_cells_stay_small(sample_dataset):
    from bloodcell.augment.rebalance import augment_images

    platelets = sample_dataset.images[
        sample_dataset.labels == sample_dataset.class_names.index("platelet")
    ][:32]
    out = augment_images(platelets, seed=0)

    def dark_fraction(imgs):  # stained cell pixels are darker than the pale background
        gray = imgs.astype(np.float32).mean(axis=-1)
        return (gray < np.median(gray, axis=(1, 2), keepdims=True) - 40).mean()

    assert dark_fraction(out) < 2.0 * dark_fraction(platelets) + 0.01


def test_colour_jitter_scales_each_image_within_its_range(sample_dataset):
    import tensorflow as tf

    from bloodcell.augment.online import OnlineAugment

    x = sample_dataset.images[:32].astype("float32")
    seed = tf.constant([3, 7], tf.int64)
    bright = OnlineAugment(dihedral=False, noise_sigma_max=0.0, brightness=0.3)
    y = np.asarray(bright(x, seed))
    ok = x * 1.3 < 255  # not clipped
    ratio = np.where(ok & (x > 20), y / np.maximum(x, 1), np.nan).reshape(32, -1)
    per_image = np.nanmedian(ratio, axis=1)
    assert np.all((per_image >= 0.7 - 1e-4) & (per_image <= 1.3 + 1e-4)) and per_image.std() > 0.05
    np.testing.assert_allclose(
        np.nanmax(ratio, axis=1), np.nanmin(ratio, axis=1), rtol=1e-4
    )  # one factor an image
    np.testing.assert_array_equal(
        y, np.asarray(bright(x, seed))
    )  # the same seed gives the same batch
    # saturation keeps every pixel's grey level (where nothing is clipped)
    sat = np.asarray(OnlineAugment(dihedral=False, noise_sigma_max=0.0, saturation=0.5)(x, seed))
    grey = lambda im: im @ np.array([0.299, 0.587, 0.114], np.float32)  # noqa: E731
    inside = (sat > 0.5).all(-1) & (sat < 254.5).all(-1)
    np.testing.assert_allclose(grey(sat)[inside], grey(x)[inside], atol=1e-2)
    assert np.abs(sat - x).max() > 10
    with pytest.raises(ValueError, match=r"augment.contrast must be in \[0, 1\)"):
        OnlineAugment(contrast=1.5)


def _dihedral_copies(image):
    out = []
    for im in (image, image.transpose(1, 0, 2)):
        out += [im, im[:, ::-1], im[::-1], im[::-1, ::-1]]
    return out


def test_online_augmentation_rotates_or_reflects_each_image_and_noises_a_fraction(sample_dataset):
    import tensorflow as tf

    from bloodcell.augment.online import OnlineAugment

    x = np.concatenate([sample_dataset.images] * 2)[:256]
    seed = tf.constant([5, 1], tf.int64)
    flipped = np.asarray(OnlineAugment(dihedral=True, noise_sigma_max=0.0)(x, seed))
    assert flipped.dtype == np.float32
    which = [
        next((k for k, c in enumerate(_dihedral_copies(im)) if np.array_equal(c, out)), None)
        for im, out in zip(x.astype(np.float32), flipped)
    ]
    assert None not in which  # every image is exactly one of its 8 rotations/reflections
    assert (
        np.bincount(which, minlength=8).min() >= 16
    )  # each of the 8 for some (256 images: 32 expected)
    np.testing.assert_array_equal(
        flipped, np.asarray(OnlineAugment(dihedral=True, noise_sigma_max=0.0)(x, seed))
    )  # same seed, same batch
    assert not np.array_equal(
        flipped, np.asarray(OnlineAugment(dihedral=True, noise_sigma_max=0.0)(x, seed + 1))
    )

    noisy = np.asarray(
        OnlineAugment(dihedral=False, noise_sigma_max=40.0, noise_probability=0.25)(x, seed)
    )
    untouched = (noisy == x).reshape(len(x), -1).all(axis=1)
    assert (
        0.15 < 1 - untouched.mean() < 0.35
    )  # about a quarter of the images get noise, the others none
    inside = (x > 60) & (x < 195)  # away from clipping
    sd = np.array([(noisy[i] - x[i])[inside[i]].std() for i in np.flatnonzero(~untouched)])
    assert sd.min() > 0 and sd.max() < 41 and 15 < sd.mean() < 25  # sigma ~ U(0, 40): mean 20
    assert noisy.min() >= 0 and noisy.max() <= 255


def _augmented(x, seed=(3, 4), **kw):
    import tensorflow as tf

    from bloodcell.augment.online import OnlineAugment

    aug = OnlineAugment(dihedral=False, noise_sigma_max=0.0, **kw)
    return np.asarray(aug(tf.constant(x), tf.constant(seed, tf.int64)))


def test_lab_shift_transforms_each_do_what_they_say(sample_dataset):
    """Every lab-shift transform is seeded, changes the images, keeps them in 0..255, and does
    its own kind of change: colour without moving structure, zoom about the centre, blur and JPEG
    on a share of the images only."""
    x = sample_dataset.images[::25][:16].astype(np.float32)
    grey = lambda im: im @ np.array([0.299, 0.587, 0.114], np.float32)  # noqa: E731
    for kw in (dict(stain=0.3), dict(white_balance=0.2), dict(hue=0.08), dict(gamma=0.5)):
        y = _augmented(x, **kw)
        assert y.min() >= 0 and y.max() <= 255 and np.abs(y - x).mean() > 2, kw
        np.testing.assert_array_equal(y, _augmented(x, **kw))  # the same seed, the same batch
        assert not np.array_equal(y, _augmented(x, seed=(3, 5), **kw))
        # a colour change: every image's structure (its grey levels) stays strongly correlated
        corr = [np.corrcoef(grey(a).ravel(), grey(b).ravel())[0, 1] for a, b in zip(x, y)]
        assert min(corr) > 0.9, (kw, min(corr))
    gains = _augmented(x, white_balance=0.2) / np.maximum(x, 1)
    per_channel = np.median(gains.reshape(16, -1, 3)[:, :, :], axis=1)
    assert per_channel.std(axis=1).max() > 0.02  # channels scaled apart: a tint

    # zooming in about the (jittered) centre: a centred spot grows and stays near the centre
    spot = np.zeros((16, 96, 96, 3), np.float32)
    spot[:, 44:52, 44:52] = 255.0
    zoomed = _augmented(spot, zoom_in=2.5, zoom_probability=1.0)
    lit = zoomed.mean(axis=-1) > 127
    assert (lit.sum(axis=(1, 2)) >= 64).all() and lit.sum() > 16 * 64 * 1.5
    ys, xs = np.nonzero(lit.any(axis=0))
    assert abs(ys.mean() - 47.5) < 8 and abs(xs.mean() - 47.5) < 8
    half = _augmented(x, zoom_in=2.5, zoom_probability=0.5, seed=(1, 1))
    untouched = (half == x).reshape(16, -1).all(axis=1)
    assert 0 < untouched.sum() < 16  # a share of the images, the others exactly as they were

    blurred = _augmented(x, blur_sigma_max=2.0, blur_probability=1.0)
    energy = lambda im: np.abs(np.diff(im, axis=1)).mean()  # noqa: E731
    assert energy(blurred) < 0.8 * energy(x)
    np.testing.assert_array_equal(
        _augmented(x, blur_sigma_max=2.0, blur_probability=0.0), x
    )  # none drawn: a no-op
    np.testing.assert_array_equal(_augmented(x, jpeg_quality_min=10, jpeg_probability=0.0), x)
    jpeg = _augmented(x, jpeg_quality_min=10, jpeg_probability=1.0)
    assert 0.5 < np.abs(jpeg - x).mean() < 20
    for bad in (
        dict(stain=1.5),
        dict(zoom_in=0.5),
        dict(jpeg_quality_min=2),
        dict(blur_probability=2.0),
    ):
        with pytest.raises(ValueError, match="augment."):
            _augmented(x, **bad)


def test_training_options_merge_augment_over_the_recipe():
    from bloodcell.model.training import TrainConfig

    cfg = TrainConfig.from_dict({"augment": {"stain": 0.2, "zoom_in": 2.0}})
    assert (
        cfg.augment.noise_sigma_max == 40.0 and cfg.augment.stain == 0.2 and cfg.augment.lab_shift
    )
    with pytest.raises(ValueError, match=r"unknown augment option\(s\) \['stains'\]"):
        TrainConfig.from_dict({"augment": {"stains": 0.2}})


def test_a_large_generated_set_is_made_a_shard_at_a_time_into_the_sink(
    sample_dataset, tmp_path, monkeypatch
):
    """Above IN_MEMORY_BYTES (lowered to 0 here) the generated images go to the step's output
    folder as shards, a shard's worth (151 at 384 px) at a time, and come back lazily."""
    from bloodcell.augment import rebalance as module
    from bloodcell.data.dataset import Dataset
    from bloodcell.data.sharded_images import ShardedImages

    keep = np.concatenate(
        [np.flatnonzero(sample_dataset.labels == c)[: 50 if c == 6 else 5] for c in range(8)]
    )
    small = sample_dataset.subset(
        np.sort(keep)
    )  # 50 neutrophils, 5 of each other class: 315 to generate
    big = Dataset(
        np.repeat(np.repeat(small.images, 4, axis=1), 4, axis=2),
        small.labels,
        small.ids,
        small.class_names,
    )
    monkeypatch.setattr(module, "IN_MEMORY_BYTES", 0)
    out = rebalance(big, sink=str(tmp_path))
    assert isinstance(out.images, ShardedImages) and out.info["generated"] == 315
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"generated-0000{k}.npy" for k in range(3)
    ]
    assert set(out.class_counts().values()) == {50}
    assert np.array_equal(
        np.asarray(out.images[: len(big)]), big.images
    )  # the originals, unchanged
    generated = np.asarray(out.images[len(big) :])
    assert generated.shape == (315, 384, 384, 3) and len({p.tobytes() for p in generated}) == 315
