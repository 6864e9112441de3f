from __future__ import annotations

import numpy as np

from bloodcell.augment import geometric, rebalance


def test_rebalance_brings_every_class_to_the_largest(sample_dataset):
    # make it imbalanced: keep 20 of each class but 40 neutrophils
    keep = []
    for c in range(8):
        members = np.flatnonzero(sample_dataset.labels == c)
        keep += list(members[: 40 if c == 6 else 20])
    train = sample_dataset.subset(sorted(keep))
    out = rebalance(train, seed=3)
    assert set(out.class_counts().values()) == {40}
    assert out.ids[: len(train)] == train.ids and np.array_equal(out.images[: len(train)], train.images)
    generated = out.ids[len(train):]
    assert len(generated) == 7 * 20 and len(set(generated)) == len(generated)
    for gid, label in zip(generated, out.labels[len(train):]):
        src, _, k = gid.partition("#aug")
        assert k.isdigit()
        assert train.labels[train.ids.index(src)] == label  # the source is an original of the same class
    gen = out.images[len(train):]
    assert gen.dtype == np.uint8 and gen.shape[1:] == (96, 96, 3)
    assert not any(np.array_equal(g, train.images[train.ids.index(i.partition("#aug")[0])]) for g, i in zip(gen, generated))
    assert out.info["generated"] == 140


def test_multiplier(sample_dataset):
    train = sample_dataset.subset(np.flatnonzero(sample_dataset.labels < 2)[:60])
    out = rebalance(train, multiplier=1.5, seed=0)
    largest = max(train.class_counts()[c] for c in ("basophil", "eosinophil"))
    assert out.class_counts()["basophil"] == out.class_counts()["eosinophil"] == round(1.5 * largest)


def test_geometric_is_a_dihedral_copy(sample_dataset):
    imgs = sample_dataset.images[:16]
    out = geometric(imgs, np.random.default_rng(0))
    for a, b in zip(imgs, out):
        variants = [np.rot90(v, k) for v in (a, a[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(b, v) for v in variants)


def test_keras_cv_engine_is_selectable(sample_dataset):
    from bloodcell.augment import augment_images

    out = augment_images(sample_dataset.images[:8], engine="keras_cv", seed=1)
    assert out.shape == (8, 96, 96, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, sample_dataset.images[:8])


def test_unknown_engine_is_a_clear_error(sample_dataset):
    import pytest

    from bloodcell.augment import augment_images

    with pytest.raises(ValueError, match="unknown augmentation engine 'albumentations'"):
        augment_images(sample_dataset.images[:2], engine="albumentations")


def test_rebalance_is_bitwise_deterministic(sample_dataset):
    train = sample_dataset.subset(np.flatnonzero(sample_dataset.labels < 3)[:70])
    a = rebalance(train, seed=7)
    b = rebalance(train, seed=7)
    c = rebalance(train, seed=8)
    assert a.ids == b.ids and a.fingerprint == b.fingerprint
    assert np.array_equal(a.images, b.images)
    assert not np.array_equal(a.images[len(train):], c.images[len(train):])


def test_small_cells_stay_small(sample_dataset):
    from bloodcell.augment import augment_images

    platelets = sample_dataset.images[sample_dataset.labels == sample_dataset.class_names.index("platelet")][:32]
    out = augment_images(platelets, seed=0)

    def dark_fraction(imgs):  # stained cell pixels are darker than the pale background
        gray = imgs.astype(np.float32).mean(axis=-1)
        return (gray < np.median(gray, axis=(1, 2), keepdims=True) - 40).mean()

    assert dark_fraction(out) < 2.0 * dark_fraction(platelets) + 0.01
