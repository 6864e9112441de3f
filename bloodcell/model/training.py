"""The fit loop and its configuration: Keras ``fit`` over the online-augmented tf.data pipeline,
with the LR schedule, early stopping, backups, weight averaging and batch-norm recalibration, so
that the model is judged (and shipped) in inference mode.

``TrainConfig``'s defaults are part of the steps' defaults (docs/configuration.md says what they
are). A config sets only what it changes.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
from pydantic import Field, model_validator

from bloodcell.augment.online import OnlineAugment
from bloodcell.data.dataset import Dataset
from bloodcell.model.batchnorm import RecalibrateEachEpoch, recalibrate_on
from bloodcell.model.compute import check_distribute, compute_policy, in_current_scope
from bloodcell.model.input_pipeline import make_dataset
from bloodcell.model.weight_averaging import WeightAveraging
from bloodcell.options import Options

OPTIMIZERS = ("lion", "adamw")
LR_SCHEDULES = ("cosine", "plateau")


class TrainConfig(Options):
    """The ``train`` step's ``training`` options (and ``fine_tune``'s, on top of
    ``FINE_TUNE_DEFAULTS``)."""

    WHERE = "training"

    epochs: int = 26
    batch_size: int = 64
    steps_per_epoch: int = (
        0  # at most this many batches an epoch (0: the whole training set); bounded runs
    )
    optimizer: str = "lion"  # or "adamw"
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    label_smoothing: float = 0.05
    early_stopping_patience: int = 8
    lr_schedule: str = "cosine"  # cosine decay to min_learning_rate; "plateau": ReduceLROnPlateau
    reduce_lr_patience: int = 3  # plateau only
    reduce_lr_factor: float = 0.5  # plateau only
    min_learning_rate: float = 3e-5
    # stochastic weight averaging (cosine schedule only): the cosine reaches min_learning_rate
    # swa_epochs before the end and stays there; the model ends as the average of the weights at
    # the end of each of those last epochs (batch norm recomputed on top); 0: off
    swa_epochs: int = 6
    warmup_epochs: int = 0  # cosine only: the LR rises linearly from 0 over these first epochs
    recalibrate_samples_per_epoch: int = 1024  # before each validation; 0 turns it off
    recalibrate_final_samples: int = (
        4096  # training originals for the final recalibration (0: all of them)
    )
    augment: OnlineAugment = Field(default_factory=OnlineAugment)
    seed: int = 0
    verbose: int = 2
    backup_dir: str | None = None  # Keras BackupAndRestore: an interrupted fit resumes from here
    # mixed-precision compute (bloodcell.model.compute): "auto" (bfloat16 where the CPU has it),
    # "float16" (or true; GPUs), "bfloat16" or false
    mixed_precision: bool | str = "auto"
    distribute: str | None = (
        None  # "mirrored": tf.distribute.MirroredStrategy over the visible GPUs
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        self.check()
        return self

    def check(self) -> None:
        """Raise a ValueError for options that do not go together."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"unknown lr_schedule {self.lr_schedule!r}; choose 'cosine' or 'plateau'"
            )
        if not 0 < self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                f"min_learning_rate {self.min_learning_rate} must be above 0 and at most "
                f"learning_rate {self.learning_rate}"
            )
        if self.swa_epochs and (
            self.lr_schedule != "cosine" or not 0 < self.swa_epochs < self.epochs
        ):
            raise ValueError(
                f"swa_epochs {self.swa_epochs} needs lr_schedule 'cosine' and a value below epochs "
                f"({self.epochs}); set swa_epochs: 0 to train without weight averaging"
            )
        if self.warmup_epochs and (
            self.lr_schedule != "cosine" or self.warmup_epochs + self.swa_epochs >= self.epochs
        ):
            raise ValueError(
                f"warmup_epochs {self.warmup_epochs} needs lr_schedule 'cosine' "
                "and warmup_epochs + swa_epochs "
                f"below epochs ({self.epochs})"
            )
        if self.steps_per_epoch < 0:
            raise ValueError(
                f"steps_per_epoch {self.steps_per_epoch} must be 0 (the whole training set) "
                "or above"
            )
        compute_policy(self.mixed_precision)
        check_distribute(self.distribute)

    @property
    def compute_policy(self) -> str:
        """The Keras dtype policy the model is built and trained under on this machine."""
        return compute_policy(self.mixed_precision)


def compile_model(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int | None = None) -> None:
    """Compile with the configured optimizer, LR schedule and loss."""
    lr: Any = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        if not steps_per_epoch:
            raise ValueError("lr_schedule 'cosine' needs steps_per_epoch")
        warmup = steps_per_epoch * cfg.warmup_epochs
        lr = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else cfg.learning_rate,
            alpha=cfg.min_learning_rate / cfg.learning_rate,
            decay_steps=steps_per_epoch * (cfg.epochs - cfg.swa_epochs - cfg.warmup_epochs),
            warmup_target=cfg.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    if cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = keras.optimizers.Lion(learning_rate=lr, weight_decay=cfg.weight_decay)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def train_model(
    model: keras.Model,
    train: Dataset,
    val: Dataset,
    cfg: TrainConfig,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> dict[str, list[float]]:
    """Fit ``model`` (compiled here with the configured optimizer and LR schedule) and return the
    Keras history. The model ends recalibrated on the training originals (and averaged over the
    last ``swa_epochs`` epochs, if set)."""
    keras.utils.set_random_seed(cfg.seed)
    n = len(train.class_names)
    steps = -(-len(train) // cfg.batch_size)
    if cfg.steps_per_epoch:
        steps = min(steps, cfg.steps_per_epoch)

    def onehot(ds: Dataset) -> np.ndarray:
        return np.eye(n, dtype=np.float32)[ds.labels]

    # one endless input pipeline for the whole fit, not a new iterator an epoch
    train_data = make_dataset(
        train,
        cfg.batch_size,
        cfg.augment,
        shuffle=True,
        seed=cfg.seed,
        repeat=True,
        targets=onehot(train),
    )
    val_data = make_dataset(val, 256, targets=onehot(val))
    compile_model(model, cfg, steps_per_epoch=steps)
    originals = train.originals()
    callbacks: list[keras.callbacks.Callback] = []
    if cfg.recalibrate_samples_per_epoch:
        callbacks.append(
            RecalibrateEachEpoch(
                originals, cfg.recalibrate_samples_per_epoch, 256, cfg.augment, cfg.seed
            )
        )
    if cfg.lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=cfg.reduce_lr_factor,
                patience=cfg.reduce_lr_patience,
                min_lr=cfg.min_learning_rate,
                verbose=1,
            )
        )
    callbacks += [
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy",
            mode="max",
            patience=cfg.early_stopping_patience,
            restore_best_weights=True,
            verbose=1,
        ),
        *(extra_callbacks or []),
    ]
    swa = None
    if (
        cfg.swa_epochs
    ):  # right after the backup (below): each epoch's snapshot is saved right after its checkpoint
        swa = WeightAveraging(
            cfg.epochs - cfg.swa_epochs,
            os.path.join(cfg.backup_dir, "swa") if cfg.backup_dir else None,
        )
        callbacks.insert(0, swa)
    if cfg.backup_dir:  # first: restores before and saves ahead of the other callbacks
        os.makedirs(cfg.backup_dir, exist_ok=True)
        # double_checkpoint: the previous epoch's weights are kept too, for a kill in mid-save
        callbacks.insert(
            0, keras.callbacks.BackupAndRestore(cfg.backup_dir, double_checkpoint=True)
        )
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=cfg.epochs,
        steps_per_epoch=steps,
        callbacks=callbacks,
        verbose=cfg.verbose,
        shuffle=False,
    )
    if swa is not None:
        averaged = swa.apply()
        if cfg.verbose:
            print(f"Weight averaging: the model is the mean of epochs {[e + 1 for e in averaged]}")
    # the final batch-norm statistics: on the training originals, through the training augmentation
    recalibrate_on(model, originals, cfg.recalibrate_final_samples, cfg.augment, cfg.seed + 1)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


FINE_TUNE_DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "optimizer": "adamw",
    "learning_rate": 1e-5,
    "weight_decay": 0.004,
    "lr_schedule": "plateau",
    "reduce_lr_patience": 5,
    "reduce_lr_factor": 0.5,
    "min_learning_rate": 1e-6,
    "swa_epochs": 0,
    "early_stopping_patience": 10,
}


def fine_tune_config(training: dict[str, Any] | None) -> TrainConfig:
    """The fine-tuning recipe (AdamW 1e-5, halve the LR after 5 flat epochs, early stopping that
    restores the best weights), with the config's ``training`` options on top."""
    return TrainConfig.from_dict(training, base=FINE_TUNE_DEFAULTS)


def fine_tune_model(
    model: keras.Model,
    train: Dataset,
    val: Dataset,
    blocks: int,
    l2: float,
    cfg: TrainConfig,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> tuple[keras.Model, dict[str, list[float]], list[str]]:
    """Unfreeze the top ``blocks`` backbone stages (batch norm stays frozen, L2 on the unfrozen
    convs) and fit again. Returns the model (the same one, or its copy under the active
    distribution strategy), the Keras history and the unfrozen layer names."""
    from bloodcell.model.transfer import unfreeze_top

    model = in_current_scope(model)
    unfrozen = unfreeze_top(model, blocks, l2)
    return model, train_model(model, train, val, cfg, extra_callbacks), unfrozen
