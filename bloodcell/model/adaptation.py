"""Adapting a shipped model to a new lab with a few labelled cells per class.

The workflow a lab follows: label 5-20 cells per class of its own (the classes may be a subset of
the model's), adapt, check on more of its cells, promote. Adaptation fine-tunes the model's own
network (inside the shipped TTA wrapper) on the lab's cells through the lab-shift augmentation,
with a replay of the model's original training images so that it keeps every class it knows, and
then recomputes the batch-norm statistics on the lab's cells: the statistics a network normalises
its features with are what moves most between labs (adaptive batch norm). The result is shipped as
before: float32, TTA, the same class list. A lab with no labels at all can take the second part
alone (``recalibrated_on``: batch norm from its unlabelled cells).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from pydantic import Field, model_validator

from bloodcell import MIN_UNLABELLED
from bloodcell.augment.online import OnlineAugment
from bloodcell.data.classes import label_map
from bloodcell.data.dataset import Dataset
from bloodcell.model.batchnorm import batchnorm_layers, recalibrate_on
from bloodcell.model.build import network_of
from bloodcell.model.input_pipeline import make_dataset
from bloodcell.model.packaging import with_float32_compute, with_tta
from bloodcell.model.predict import model_classes
from bloodcell.options import Options

NO_BATCH_NORM = (
    "batch norm from the lab's images: the model has no batch-norm layer (rule: only batch norm's "
    "statistics depend on the images they saw; group norm needs none), so unlabelled cells "
    "cannot adapt it: "
    "adapt it with a few labelled cells a class (`bloodcell adapt` without --unlabelled)"
)


def _lab_augment() -> OnlineAugment:
    return OnlineAugment(
        noise_sigma_max=20.0,
        noise_probability=0.3,
        brightness=0.1,
        contrast=0.1,
        saturation=0.1,
        white_balance=0.05,
        zoom_in=1.3,
    )


class AdaptConfig(Options):
    """The ``adapt`` step's ``adaptation`` options."""

    WHERE = "adaptation"

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 5e-5  # Lion: a tenth of the recipe's
    weight_decay: float = 0.01
    label_smoothing: float = 0.05
    replay_per_class: int = (
        20  # original training images of each of the model's classes mixed in; 0: none
    )
    lab_weight: float = 4.0  # each lab cell counts this many times against one replayed image
    recalibrate: str = (
        "lab"  # batch-norm statistics from: "lab" (the lab's cells), "mixed" (lab + replay), "none"
    )
    augment: OnlineAugment = Field(default_factory=_lab_augment)
    seed: int = 0
    verbose: int = 0

    @model_validator(mode="after")
    def _check(self) -> AdaptConfig:
        if self.recalibrate not in ("lab", "mixed", "none"):
            raise ValueError(f"recalibrate {self.recalibrate!r}: choose 'lab', 'mixed' or 'none'")
        return self


def in_model_labels(ds: Dataset, classes: list[str], where: str) -> Dataset:
    """``ds`` relabelled into the model's class list (a clear error for a class it lacks)."""
    mapping = label_map(ds.class_names, classes, where)
    return Dataset(
        images=ds.images,
        labels=mapping[ds.labels],
        ids=ds.ids,
        class_names=list(classes),
        info=ds.info,
    )


def _check_size(model: keras.Model, images: Dataset, what: str) -> None:
    size = tuple(model.input_shape[1:3])
    if images.images.shape[1:3] != size:
        raise ValueError(
            f"{what} are {images.images.shape[1]}x{images.images.shape[2]}, "
            f"the model takes {size[0]}x{size[1]}"
        )


def _network_copy(model: keras.Model) -> tuple[keras.Model, bool]:
    """A copy of the network inside the shipped ``model`` (weights and batch-norm statistics too),
    to change without touching ``model``, and whether the shipped model wraps it in TTA."""
    source = network_of(model)
    net = keras.models.clone_model(source)
    net.set_weights(source.get_weights())
    return net, source is not model


def adapt_model(
    model: keras.Model, lab: Dataset, replay: Dataset | None = None, cfg: AdaptConfig | None = None
) -> tuple[keras.Model, dict[str, Any]]:
    """The shipped ``model`` adapted to ``lab`` (labelled cells of the new lab, any subset of the
    model's classes), and notes on what was done. ``replay``: the model's original training data."""
    cfg = cfg or AdaptConfig()
    classes = model_classes(model)
    lab = in_model_labels(lab, classes, "adaptation data")
    _check_size(model, lab, "adaptation data")
    keras.utils.set_random_seed(cfg.seed)
    net, tta = _network_copy(model)
    parts, weights = [lab], [np.full(len(lab), cfg.lab_weight, np.float32)]
    if replay is not None and cfg.replay_per_class:
        replay = in_model_labels(replay.originals(), classes, "replay data")
        rng = np.random.default_rng(cfg.seed)
        pick = np.concatenate(
            [
                rng.permutation(np.flatnonzero(replay.labels == c))[: cfg.replay_per_class]
                for c in range(len(classes))
            ]
        )
        parts.append(replay.subset(np.sort(pick)))
        weights.append(np.ones(len(pick), np.float32))
    train = Dataset(
        images=np.concatenate([p.images for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        ids=[i for p in parts for i in p.ids],
        class_names=list(classes),
    )
    sample_weight = np.concatenate(weights)
    targets = {"y": np.eye(len(classes), dtype=np.float32)[train.labels], "w": sample_weight}
    data = make_dataset(
        train, cfg.batch_size, cfg.augment, shuffle=True, seed=cfg.seed, targets=targets
    )
    data = data.map(lambda x, t: (x, t["y"], t["w"]))
    net.compile(
        optimizer=keras.optimizers.Lion(
            learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay
        ),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
    )
    history = net.fit(data, epochs=cfg.epochs, verbose=cfg.verbose, shuffle=False)
    recalibrate = cfg.recalibrate if batchnorm_layers(net) else "none (the model has no batch norm)"
    if recalibrate in ("lab", "mixed"):
        stats_from = lab if cfg.recalibrate == "lab" else train
        recalibrate_on(net, stats_from, 0, cfg.augment, cfg.seed)
    shipped = with_float32_compute(net)
    shipped = with_tta(shipped) if tta else shipped
    info = {
        "lab_cells": len(lab),
        "lab_classes": sorted({classes[i] for i in lab.labels}),
        "replayed": len(train) - len(lab),
        "epochs": cfg.epochs,
        "final_loss": float(history.history["loss"][-1]),
        "recalibrate": recalibrate,
    }
    return shipped, info


def recalibrated_on(
    model: keras.Model, images: Dataset, augment: OnlineAugment | None = None, seed: int = 0
) -> keras.Model:
    """A copy of the shipped ``model`` with its batch-norm statistics recomputed on ``images``
    (a lab's unlabelled cells; labels, if any, are not read): adaptation without any label.
    Statistics from few images would be noise: at least ``MIN_UNLABELLED`` are needed. A model
    with no batch norm (``norm: group`` or ``group_ws``) has nothing to recompute: a clear error."""
    if not batchnorm_layers(model):
        raise ValueError(NO_BATCH_NORM)
    if len(images) < MIN_UNLABELLED:
        raise ValueError(
            f"batch norm from the lab's images: {len(images)} image(s) given, "
            f"at least {MIN_UNLABELLED} are "
            "needed (rule: enough cells for stable statistics; a few hundred are better)"
        )
    _check_size(model, images, "the lab's images")
    net, tta = _network_copy(model)
    recalibrate_on(net, images, 0, augment or OnlineAugment(noise_sigma_max=0.0), seed)
    return with_tta(net) if tta else net


def rule_cells(
    lab: Dataset,
    replay: Dataset,
    val: Dataset,
    checks: Dataset | None,
    classes: list[str],
    fit_samples: int,
    seed: int = 0,
) -> tuple[Dataset, Dataset, str]:
    """The cells an adapted model's referral rule is refitted on: its training cells (every lab
    cell, then replayed originals up to ``fit_samples``) for the class means and covariance; the
    lab's labelled check cells, where there are any, else the base version's val split, for the
    temperature and thresholds; and which of the two that was. Labels in the model's classes."""
    lab = in_model_labels(lab, classes, "adaptation data")
    originals = in_model_labels(replay.originals(), classes, "replay data").sample(
        max(fit_samples - len(lab), 1), seed
    )
    fit = Dataset(
        images=np.concatenate([np.asarray(lab.images), np.asarray(originals.images)]),
        labels=np.concatenate([lab.labels, originals.labels]),
        ids=lab.ids + originals.ids,
        class_names=list(classes),
    )
    if checks is not None and len(checks):
        return fit, in_model_labels(checks, classes, "check cells"), "the lab's check cells"
    return fit, in_model_labels(val, classes, "val split"), "the base version's val split"


def split_for_adaptation(ds: Dataset, k: int, seed: int) -> tuple[Dataset, Dataset]:
    """``k`` cells of each class for adaptation (fewer where the class has few: at least one is
    kept back to score), and the rest to score on."""
    rng = np.random.default_rng(seed)
    adapt_idx = []
    for c in np.unique(ds.labels):
        members = rng.permutation(np.flatnonzero(ds.labels == c))
        adapt_idx += list(members[: min(k, len(members) - 1)])
    adapt_idx = np.sort(np.asarray(adapt_idx, dtype=np.int64))
    rest = np.setdiff1d(np.arange(len(ds)), adapt_idx)
    return ds.subset(adapt_idx), ds.subset(rest)
