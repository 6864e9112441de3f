"""Augmentation: materialised rebalancing (RandAugment + AugMix) and light online transforms."""

from __future__ import annotations

from typing import Any

import numpy as np

from bloodcell.dataset import Dataset

ENGINES = ("keras", "keras_cv")


def _make_layers(engine: str, seed: int, randaugment: dict[str, Any], augmix: dict[str, Any]):
    if engine == "keras":
        import keras

        return (
            keras.layers.RandAugment(value_range=(0, 255), seed=seed, **randaugment),
            keras.layers.AugMix(value_range=(0, 255), seed=seed + 1, **augmix),
        )
    if engine == "keras_cv":
        import keras_cv

        return (
            keras_cv.layers.RandAugment(value_range=(0, 255), seed=seed, **randaugment),
            keras_cv.layers.AugMix(value_range=(0, 255), seed=seed + 1, **augmix),
        )
    raise ValueError(f"unknown augmentation engine {engine!r}; choose one of {ENGINES}")


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
    batch_size: int = 256,
    randaugment: dict[str, Any] | None = None,
    augmix: dict[str, Any] | None = None,
) -> np.ndarray:
    """Flip/rot90, then RandAugment on even positions and AugMix on odd ones. uint8 in, uint8 out."""
    import tensorflow as tf

    rand_layer, mix_layer = _make_layers(engine, seed, randaugment or {}, augmix or {})
    rng = np.random.default_rng(seed)
    base = geometric(images, rng)
    out = np.empty_like(base)
    even = np.arange(0, len(base), 2)
    odd = np.arange(1, len(base), 2)
    for layer, sel in ((rand_layer, even), (mix_layer, odd)):
        for start in range(0, len(sel), batch_size):
            part = sel[start:start + batch_size]
            batch = tf.convert_to_tensor(base[part].astype(np.float32))
            res = np.asarray(layer(batch, training=True))
            out[part] = np.clip(np.round(res), 0, 255).astype(np.uint8)
    return out


def rebalance(
    train: Dataset,
    engine: str = "keras",
    multiplier: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    randaugment: dict[str, Any] | None = None,
    augmix: dict[str, Any] | None = None,
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
        train.images[sources], engine=engine, seed=seed, batch_size=batch_size,
        randaugment=randaugment, augmix=augmix,
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
