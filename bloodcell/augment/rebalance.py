"""Rebalancing: every class of the train split topped up to the size of the largest with
augmented copies of its own originals (RandAugment + AugMix), materialised once by the
``rebalance`` step. ``engine``: Keras 3 core layers (default) or keras-cv's."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field, model_validator

from bloodcell.data import dihedral
from bloodcell.data.dataset import Dataset, generated_id
from bloodcell.data.sharded_images import ShardedImages
from bloodcell.data.shards import images_per_shard, write_shards
from bloodcell.options import Options

ENGINES = ("keras", "keras_cv")


def _keras_core(
    seed: int, randaugment: dict[str, Any], augmix: dict[str, Any], shift: float, zoom: float
):
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
    light = keras.Sequential(
        [
            keras.layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomZoom((-zoom, zoom), fill_mode="reflect", seed=seed + 3),
        ]
    )

    def apply(name, images, transform):
        return tf.cast(getattr(rand, name).transform_images(images, transform), tf.float32)

    @tf.function(reduce_retracing=True)
    def randaugment_fn(images):
        images = light(images, training=True)
        chosen = rand.get_random_transformation(images, training=True)
        # ``transforms`` holds one entry per operation, keyed by the sub-layer's attribute name, in
        # the order ``layer_idxes`` counts them (the layer's own transform_images relies on it)
        names = list(chosen["transforms"])
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


def _keras_cv(
    seed: int, randaugment: dict[str, Any], augmix: dict[str, Any], shift: float, zoom: float
):
    """keras-cv's layers (archived; about 10x slower here), called as they are."""
    import keras
    import keras_cv

    light = keras.Sequential(
        [
            keras.layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomZoom((-zoom, zoom), fill_mode="reflect", seed=seed + 3),
        ]
    )
    rand = keras_cv.layers.RandAugment(value_range=(0, 255), seed=seed, **randaugment)
    mix = keras_cv.layers.AugMix(value_range=(0, 255), seed=seed + 1, **augmix)
    return (
        lambda x: rand(light(x, training=True), training=True),
        lambda x: mix(light(x, training=True), training=True),
    )


ENGINE_BUILDERS = {"keras": _keras_core, "keras_cv": _keras_cv}


def geometric(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image through one of its 8 rotations/reflections, drawn at random (exact, no
    interpolation)."""
    return dihedral.apply_each(images, rng.integers(0, dihedral.COUNT, len(images)))


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


class RebalanceConfig(Options):
    """The ``rebalance`` step's options (its defaults are these)."""

    WHERE = "steps.rebalance.parameters"

    engine: str = "keras"  # or "keras_cv"
    multiplier: float = 1.0  # every class to this multiple of the largest
    seed: int = 0
    group: int = 32  # images that share one RandAugment/AugMix operation choice
    randaugment: dict[str, Any] = Field(default_factory=dict)  # keras.layers.RandAugment options
    augmix: dict[str, Any] = Field(default_factory=dict)  # keras.layers.AugMix options
    shift: float = 0.05  # the light shift and zoom before them (zoom small: platelets stay small)
    zoom: float = 0.08

    @model_validator(mode="after")
    def _check(self) -> RebalanceConfig:
        if self.engine not in ENGINE_BUILDERS:
            raise ValueError(
                f"unknown augmentation engine {self.engine!r}; choose one of {ENGINES}"
            )
        if self.multiplier < 1.0:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        return self


def augment_images(
    images: np.ndarray, cfg: RebalanceConfig | None = None, **overrides: Any
) -> np.ndarray:
    """Flip/rot90, a small shift and zoom, then RandAugment on even positions and AugMix on odd
    ones.

    uint8 in, uint8 out. ``cfg.group`` images share one RandAugment/AugMix operation choice. Zoom
    is at most ``cfg.zoom`` either way, so small cells (platelets) stay small. The same input,
    seed and options give bitwise the same output: the Keras global seed is set from the seed as
    well, for the random draws the layers make without their own seed.
    """
    import keras
    import tensorflow as tf

    cfg = cfg or RebalanceConfig(**overrides)
    keras.utils.set_random_seed(cfg.seed)
    rand_fn, mix_fn = ENGINE_BUILDERS[cfg.engine](
        cfg.seed, cfg.randaugment or {}, cfg.augmix or {}, cfg.shift, cfg.zoom
    )
    rng = np.random.default_rng(cfg.seed)
    base = geometric(images, rng)
    out = np.empty_like(base)
    even = np.arange(0, len(base), 2)
    odd = np.arange(1, len(base), 2)
    for fn, sel in ((rand_fn, even), (mix_fn, odd)):
        for start in range(0, len(sel), cfg.group):
            part = sel[start : start + cfg.group]
            res = np.asarray(fn(tf.convert_to_tensor(base[part].astype(np.float32))))
            out[part] = np.clip(np.round(res), 0, 255).astype(np.uint8)
    return out


# above this many bytes of generated images, they are made a shard at a time into ``sink``
IN_MEMORY_BYTES = 2 * 2**30


def _generated(train: Dataset, sources: np.ndarray, cfg: RebalanceConfig, sink: str | None) -> Any:
    """The augmented images of ``train``'s ``sources``: at once, in memory; or, when there are
    more than ``IN_MEMORY_BYTES`` of them and a ``sink`` folder, a shard at a time (each with its
    own seed, ``cfg.seed`` + the shard number) written there as ``generated-00000.npy``, ..."""
    shape = tuple(train.images.shape[1:])
    if sink is None or len(sources) * int(np.prod(shape)) <= IN_MEMORY_BYTES:
        return augment_images(train.images[sources], cfg)
    per = images_per_shard(shape)

    def chunks():
        for k, start in enumerate(range(0, len(sources), per)):
            yield augment_images(
                train.images[sources[start : start + per]],
                cfg.model_copy(update={"seed": cfg.seed + k}),
            )

    return ShardedImages(
        [(sink, s) for s in write_shards(sink, chunks(), prefix="generated")], shape
    )


def rebalance(
    train: Dataset, cfg: RebalanceConfig | None = None, sink: str | None = None, **overrides: Any
) -> Dataset:
    """Bring every class to ``cfg.multiplier`` x the size of the largest by augmenting its
    originals.

    Originals come first, unchanged; each generated sample's id is
    ``dataset.generated_id(source, k)``.
    ``sink``: the folder where generated images beyond ``IN_MEMORY_BYTES`` are written as shards.
    """
    cfg = cfg or RebalanceConfig(**overrides)
    counts = np.bincount(train.labels, minlength=len(train.class_names))
    target = int(round(counts.max() * cfg.multiplier))
    rng = np.random.default_rng(cfg.seed)
    sources = plan_sources(train.labels, target, rng)
    if len(sources) == 0:
        return train.subset(np.arange(len(train)), generated=0)
    generated = _generated(train, sources, cfg, sink)
    uses: dict[int, int] = {}
    gen_ids = []
    for s in sources:
        k = uses.get(int(s), 0) + 1
        uses[int(s)] = k
        gen_ids.append(generated_id(train.ids[s], k))
    return Dataset(
        images=train.concat_images(generated),
        labels=np.concatenate([train.labels, train.labels[sources]]),
        ids=train.ids + gen_ids,
        class_names=list(train.class_names),
        info={
            **train.info,
            "generated": int(len(sources)),
            "augmentation_engine": cfg.engine,
            "target_per_class": target,
        },
    )
