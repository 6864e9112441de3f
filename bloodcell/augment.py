"""Augmentation: materialised rebalancing (RandAugment + AugMix) and light online transforms."""

from __future__ import annotations

from typing import Any

import numpy as np

from bloodcell.dataset import Dataset

ENGINES = ("keras", "keras_cv")


def _keras_core(seed: int, randaugment: dict[str, Any], augmix: dict[str, Any], shift: float, zoom: float):
    """Compiled batch functions built on Keras 3 core layers.

    ``keras.layers.RandAugment`` picks ``num_ops`` operations per batch and, to do so, computes all
    eleven of them on the batch and keeps the chosen ones. Here the same layer draws the same
    choices and magnitudes, but ``tf.switch_case`` computes only the chosen operations (about 7x
    faster on CPU); small batches (``group``) keep the choice varied across images.
    """
    import functools

    import keras
    import tensorflow as tf

    rand = keras.layers.RandAugment(value_range=(0, 255), seed=seed, **randaugment)
    mix = keras.layers.AugMix(value_range=(0, 255), seed=seed + 1, **augmix)
    light = keras.Sequential([
        keras.layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomZoom((-zoom, zoom), fill_mode="reflect", seed=seed + 3),
    ])
    names = list(rand._AUGMENT_LAYERS)

    def apply(name, images, transform):
        return tf.cast(getattr(rand, name).transform_images(images, transform), tf.float32)

    @tf.function(reduce_retracing=True)
    def randaugment_fn(images):
        images = light(images, training=True)
        chosen = rand.get_random_transformation(images, training=True)
        for i in range(rand.num_ops):
            images = tf.switch_case(
                tf.cast(chosen["layer_idxes"][i], tf.int32),
                [functools.partial(apply, n, images, chosen["transforms"][n]) for n in names],
            )
        return images

    @tf.function(reduce_retracing=True)
    def augmix_fn(images):
        return mix(light(images, training=True), training=True)

    return randaugment_fn, augmix_fn


def _keras_cv(seed: int, randaugment: dict[str, Any], augmix: dict[str, Any], shift: float, zoom: float):
    """keras-cv's layers (archived; about 10x slower here), called as they are."""
    import keras
    import keras_cv

    light = keras.Sequential([
        keras.layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomZoom((-zoom, zoom), fill_mode="reflect", seed=seed + 3),
    ])
    rand = keras_cv.layers.RandAugment(value_range=(0, 255), seed=seed, **randaugment)
    mix = keras_cv.layers.AugMix(value_range=(0, 255), seed=seed + 1, **augmix)
    return (lambda x: rand(light(x, training=True), training=True),
            lambda x: mix(light(x, training=True), training=True))


ENGINE_BUILDERS = {"keras": _keras_core, "keras_cv": _keras_cv}


def geometric(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip and 90-degree rotation of each image (exact, no interpolation)."""
    out = images.copy()
    flips = rng.random(len(out)) < 0.5
    out[flips] = out[flips, :, ::-1]
    turns = rng.integers(0, 4, len(out))
    for k in (1, 2, 3):
        sel = turns == k
        out[sel] = np.rot90(out[sel], k=k, axes=(1, 2))
    return out


def plan_sources(labels: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the originals to augment so that every class reaches ``target`` samples.

    Within a class the originals are used in a shuffled round-robin, so each is used about
    equally often.
    """
    plan = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        deficit = target - len(members)
        if deficit <= 0:
            continue
        reps = -(-deficit // len(members))
        order = np.concatenate([rng.permutation(members) for _ in range(reps)])[:deficit]
        plan.append(order)
    return np.concatenate(plan) if plan else np.empty(0, dtype=np.int64)


def augment_images(
    images: np.ndarray,
    engine: str = "keras",
    seed: int = 0,
    group: int = 32,
    randaugment: dict[str, Any] | None = None,
    augmix: dict[str, Any] | None = None,
    shift: float = 0.05,
    zoom: float = 0.08,
) -> np.ndarray:
    """Flip/rot90, a small shift and zoom, then RandAugment on even positions and AugMix on odd ones.

    uint8 in, uint8 out. ``group`` images share one RandAugment/AugMix operation choice. Zoom is
    at most ``zoom`` either way, so small cells (platelets) stay small. The same input, seed and
    options give bitwise the same output: the Keras global seed is set from ``seed`` as well, for
    the random draws the layers make without their own seed.
    """
    import keras
    import tensorflow as tf

    if engine not in ENGINE_BUILDERS:
        raise ValueError(f"unknown augmentation engine {engine!r}; choose one of {ENGINES}")
    keras.utils.set_random_seed(seed)
    rand_fn, mix_fn = ENGINE_BUILDERS[engine](seed, randaugment or {}, augmix or {}, shift, zoom)
    rng = np.random.default_rng(seed)
    base = geometric(images, rng)
    out = np.empty_like(base)
    even = np.arange(0, len(base), 2)
    odd = np.arange(1, len(base), 2)
    for fn, sel in ((rand_fn, even), (mix_fn, odd)):
        for start in range(0, len(sel), group):
            part = sel[start:start + group]
            res = np.asarray(fn(tf.convert_to_tensor(base[part].astype(np.float32))))
            out[part] = np.clip(np.round(res), 0, 255).astype(np.uint8)
    return out


def rebalance(
    train: Dataset,
    engine: str = "keras",
    multiplier: float = 1.0,
    seed: int = 0,
    group: int = 32,
    randaugment: dict[str, Any] | None = None,
    augmix: dict[str, Any] | None = None,
    shift: float = 0.05,
    zoom: float = 0.08,
) -> Dataset:
    """Bring every class to ``multiplier`` x the size of the largest by augmenting its originals.

    Originals come first, unchanged; each generated sample's id is ``<source id>#aug<k>``.
    """
    if multiplier < 1.0:
        raise ValueError(f"multiplier must be >= 1, got {multiplier}")
    counts = np.bincount(train.labels, minlength=len(train.class_names))
    target = int(round(counts.max() * multiplier))
    rng = np.random.default_rng(seed)
    sources = plan_sources(train.labels, target, rng)
    if len(sources) == 0:
        return train.subset(np.arange(len(train)), generated=0)
    generated = augment_images(
        train.images[sources], engine=engine, seed=seed, group=group,
        randaugment=randaugment, augmix=augmix, shift=shift, zoom=zoom,
    )
    uses: dict[int, int] = {}
    gen_ids = []
    for s in sources:
        k = uses.get(int(s), 0) + 1
        uses[int(s)] = k
        gen_ids.append(f"{train.ids[s]}#aug{k}")
    return Dataset(
        images=np.concatenate([train.images, generated]),
        labels=np.concatenate([train.labels, train.labels[sources]]),
        ids=train.ids + gen_ids,
        class_names=list(train.class_names),
        info={**train.info, "generated": int(len(sources)), "augmentation_engine": engine, "target_per_class": target},
    )
