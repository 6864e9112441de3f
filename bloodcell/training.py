"""Training: a tf.data input pipeline with light online augmentation, Keras ``fit``, and
batch-norm recalibration so that the model is judged (and shipped) in inference mode.

Augmented training images have other statistics than clean ones, so the batch-norm moving
averages gathered during training do not fit clean images. ``recalibrate_batchnorm`` recomputes
them on clean (online-augmented only) training originals: at the end of every epoch on a subset,
so that validation metrics, early stopping and LR schedule see the inference-mode model, and on
all originals at the end.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bloodcell.dataset import Dataset
from bloodcell.models import with_subtype_head
from bloodcell.subtypes import fine_classes, fine_targets


@dataclass
class OnlineAugment:
    """Light transforms applied on the fly to every training batch."""

    dihedral: bool = True  # random flips and transposition: all 8 rotations/reflections
    noise_sigma_max: float = 0.0  # Gaussian noise with sigma ~ U(0, max) on the 0..255 scale
    noise_probability: float = 0.5  # fraction of images that get noise
    # colour jitter, a factor per image ~ U(1 - j, 1 + j); 0 leaves it out
    brightness: float = 0.0  # every pixel value scaled
    contrast: float = 0.0  # deviations from the image's mean scaled
    saturation: float = 0.0  # deviations from the pixel's grey level scaled

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1), got {getattr(self, name)}")

    def colour(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        n = tf.shape(x)[0]
        seeds = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, 1), 3)

        def factor(j, s):
            return tf.random.stateless_uniform([n, 1, 1, 1], s, 1.0 - j, 1.0 + j)
        if self.brightness:
            x = x * factor(self.brightness, seeds[0])
        if self.contrast:
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = mean + (x - mean) * factor(self.contrast, seeds[1])
        if self.saturation:
            grey = tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
            x = grey + (x - grey) * factor(self.saturation, seeds[2])
        return tf.clip_by_value(x, 0.0, 255.0)

    def __call__(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """``images`` (a batch, any dtype, 0..255) augmented as float32; the same ``seed`` (a
        stateless seed pair) gives the same result."""
        n = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(seed, 4)
        x = images
        if self.dihedral:  # one gather: each image through one of the 8 transforms, in its own dtype
            k = tf.random.stateless_uniform([n], seeds[0], 0, 8, dtype=tf.int32)
            x = tf.reshape(tf.gather(tf.reshape(x, [n, -1, 3]), tf.gather(_dihedral_index(images.shape[1:3]), k), batch_dims=1),
                           tf.shape(images))
        x = tf.cast(x, tf.float32)
        if self.brightness or self.contrast or self.saturation:
            x = self.colour(x, seed)
        if self.noise_sigma_max > 0:  # noise drawn only for the images that get it
            sigma = tf.random.stateless_uniform([n], seeds[1], 0.0, self.noise_sigma_max)
            noisy = tf.where(tf.random.stateless_uniform([n], seeds[2]) < self.noise_probability)
            noise = tf.random.stateless_normal(tf.concat([tf.shape(noisy)[:1], tf.shape(x)[1:]], 0), seeds[3])
            x = tf.tensor_scatter_nd_add(x, noisy, noise * tf.reshape(tf.gather_nd(sigma, noisy), [-1, 1, 1, 1]))
            x = tf.clip_by_value(x, 0.0, 255.0)
        return x


def _dihedral_index(shape: tuple[int, int]) -> tf.Tensor:
    """(8, H*W) int32: row k lists, for each output pixel, the input pixel of dihedral transform k
    (bit 0: left-right flip, bit 1: up-down flip, bit 2: transpose; square images only)."""
    h, w = shape
    if h != w:
        raise ValueError(f"online dihedral augmentation needs square images, got {h}x{w}")
    grid = np.arange(h * w).reshape(h, w)
    rows = []
    for k in range(8):
        g = grid[:, ::-1] if k & 1 else grid
        g = g[::-1, :] if k & 2 else g
        rows.append((g.T if k & 4 else g).reshape(-1))
    return tf.constant(np.stack(rows).astype(np.int32))


def make_dataset(
    ds: Dataset, batch_size: int, augment: OnlineAugment | None = None,
    shuffle: bool = False, seed: int = 0, repeat: bool = False, targets: Any = None,
) -> tf.data.Dataset:
    """Batches of (float32 images, labels), augmented by ``augment`` with a fresh seed a batch.
    ``repeat``: endless, one epoch after the other (each reshuffled), batches not crossing epochs.
    ``targets`` (arrays, or a dict of arrays, one row a sample) go in place of the labels."""
    data = tf.data.Dataset.from_tensor_slices((ds.images, ds.labels if targets is None else targets))
    if shuffle:
        data = data.shuffle(len(ds), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    if repeat:
        data = data.repeat()
    if augment is not None:
        counter = tf.data.Dataset.counter()
        data = tf.data.Dataset.zip((data, counter)).map(
            lambda xy, i: (augment(xy[0], tf.stack([tf.cast(seed, tf.int64), i])), xy[1]),
            num_parallel_calls=tf.data.AUTOTUNE,  # cores; autotuning is off (below)
        )
    else:
        data = data.map(lambda x, y: (tf.cast(x, tf.float32), y))
    # tf.data autotuning off: with it, retiring an iterator (a new epoch, the end of fit) now and
    # then stalled for ~20 s on a 2-core machine; without it, AUTOTUNE parallelism means all cores
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.prefetch(4).with_options(options)


def images_only(data: tf.data.Dataset) -> tf.data.Dataset:
    return data.map(lambda x, y: x)


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [
        layer for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


_FORWARD: "weakref.WeakKeyDictionary[keras.Model, Any]" = weakref.WeakKeyDictionary()


def _training_forward(model: keras.Model):
    """``model(x, training=True)`` as one compiled function a model, traced (once) while every
    batch-norm momentum is 0, so each call leaves the batch's own statistics in the moving
    averages. The training step's compiled function is not affected: it was traced with the real
    momentum, which is a Python float read only when tracing."""
    if model not in _FORWARD:
        ref = weakref.ref(model)  # the cached function must not keep its key (the model) alive
        _FORWARD[model] = tf.function(lambda x: ref()(x, training=True), reduce_retracing=True)
    return _FORWARD[model]


def recalibrate_batchnorm(model: keras.Model, batches: Any) -> int:
    """Recompute the moving mean/variance of every trainable BatchNormalization layer as the
    average over ``batches`` (an iterable of float image batches) of the batch statistics.
    Returns the batch count; with no batches the statistics are left as they were."""
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    means = [np.zeros(bn.moving_mean.shape, np.float64) for bn in bns]
    variances = [np.zeros(bn.moving_variance.shape, np.float64) for bn in bns]
    k = 0
    try:
        for bn in bns:
            bn.momentum = 0.0
        forward = _training_forward(model)
        for batch in batches:
            forward(batch)
            for bn, m, v in zip(bns, means, variances):
                m += np.asarray(bn.moving_mean)
                v += np.asarray(bn.moving_variance)
            k += 1
        if k:
            for bn, m, v in zip(bns, means, variances):
                bn.moving_mean.assign((m / k).astype(np.float32))
                bn.moving_variance.assign((v / k).astype(np.float32))
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
    return k


def clean_originals(ds: Dataset) -> Dataset:
    """The training samples that are not generated by rebalancing."""
    keep = [i for i, sid in enumerate(ds.ids) if "#aug" not in sid]
    return ds.subset(keep)


def prior_log_ratio(train: Dataset) -> np.ndarray:
    """Per class, log(frequency among the training originals / frequency in the (rebalanced)
    training set). Rebalancing trains the model on equal priors, so it over-predicts the small
    classes; adding this to its logits gives the posterior under the originals' class frequencies
    (logit adjustment). Zero for a class absent from either."""
    n = len(train.class_names)
    counts = np.bincount(train.labels, minlength=n).astype(np.float64)
    originals = np.bincount(clean_originals(train).labels, minlength=n).astype(np.float64)
    ratio = np.zeros(n)
    have = (counts > 0) & (originals > 0)
    ratio[have] = np.log(originals[have] / originals.sum()) - np.log(counts[have] / counts.sum())
    return ratio


def recalibrate_on_originals(model: keras.Model, originals: Dataset, cfg: "TrainConfig",
                             augment: OnlineAugment | None = None) -> int:
    """The end-of-training recalibration: batch norm recomputed on ``cfg.recalibrate_final_samples``
    of the training ``originals`` (drawn with ``cfg.seed + 1``), passed through ``augment`` (by
    default the training augmentation ``cfg.augment``). Returns the batch count."""
    final = originals.sample(cfg.recalibrate_final_samples, cfg.seed + 1)
    return recalibrate_batchnorm(model, images_only(make_dataset(final, 256, augment or cfg.augment, seed=cfg.seed)))


class RecalibrateEachEpoch(keras.callbacks.Callback):
    """Recalibrate batch norm on a subset of clean originals just before each validation."""

    def __init__(self, originals: Dataset, samples: int, batch_size: int, augment: OnlineAugment, seed: int):
        super().__init__()
        self.data = images_only(make_dataset(originals.sample(samples, seed), batch_size, augment, seed=seed))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        steps = self.params.get("steps")
        if steps and batch == steps - 1:
            recalibrate_batchnorm(self.model, self.data)


class WeightAveraging(keras.callbacks.Callback):
    """Stochastic weight averaging (Izmailov et al., 2018): the running mean of the trainable
    weights at the end of each epoch from ``start_epoch`` on; ``apply`` puts it on the model (call
    it after ``fit``, so it replaces the best epoch that early stopping restores). Batch norm
    statistics do not fit averaged weights: recompute them afterwards. With ``state_dir`` the
    running mean is saved there after each epoch and picked up again by a resumed fit."""

    def __init__(self, start_epoch: int, state_dir: str | None = None):
        super().__init__()
        self.start_epoch = start_epoch
        self.path = os.path.join(state_dir, "weight_average.npz") if state_dir else None
        self.mean: list[np.ndarray] | None = None
        self.epochs: list[int] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.mean, self.epochs = None, []
        if self.path and os.path.exists(self.path):
            with np.load(self.path, allow_pickle=False) as saved:
                self.epochs = [int(e) for e in saved["epochs"]]
                self.mean = [saved[f"w{i}"] for i in range(len(self.model.trainable_weights))]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch < self.start_epoch or epoch in self.epochs:
            return
        current = [keras.ops.convert_to_numpy(w).astype(np.float64) for w in self.model.trainable_weights]
        n = len(self.epochs)
        self.mean = current if self.mean is None else [m + (c - m) / (n + 1) for m, c in zip(self.mean, current)]
        self.epochs.append(epoch)
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self.path + ".tmp.npz"
            np.savez(tmp, epochs=np.asarray(self.epochs), **{f"w{i}": m for i, m in enumerate(self.mean)})
            os.replace(tmp, self.path)

    def apply(self) -> list[int]:
        """Set the model's trainable weights to the average (if any epoch was averaged), forget
        the saved state, and return the averaged epochs (0-based)."""
        if self.mean is not None:
            for w, m in zip(self.model.trainable_weights, self.mean):
                w.assign(m.astype(w.dtype))
        if self.path and os.path.exists(self.path):
            os.remove(self.path)
        return self.epochs


OPTIMIZERS = ("lion", "adamw")
MIXED_PRECISION = (False, True, "float16", "bfloat16", "auto")


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "lion"  # or "adamw"
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    early_stopping_patience: int = 8
    lr_schedule: str = "plateau"  # "plateau": ReduceLROnPlateau; "cosine": cosine decay to min_learning_rate
    reduce_lr_patience: int = 3
    reduce_lr_factor: float = 0.5
    min_learning_rate: float = 1e-6
    # stochastic weight averaging (cosine schedule only): the cosine reaches min_learning_rate
    # swa_epochs before the end and stays there; the model ends as the average of the weights at
    # the end of each of those last epochs (batch norm recomputed on top); 0: off
    swa_epochs: int = 0
    recalibrate_samples_per_epoch: int = 2048  # 0 turns off per-epoch recalibration
    recalibrate_final: bool = True
    recalibrate_final_samples: int = 4096  # clean originals for the final recalibration (0: all of them)
    augment: OnlineAugment = field(default_factory=OnlineAugment)
    seed: int = 0
    verbose: int = 2
    backup_dir: str | None = None  # Keras BackupAndRestore: an interrupted fit resumes from here
    # mixed-precision compute; variables and outputs stay float32. "float16" (or true): GPUs;
    # "bfloat16": CPUs with native bf16 (AMX / AVX512-BF16); "auto": bfloat16 where the CPU has it,
    # else off; false: float32
    mixed_precision: bool | str = False
    distribute: str | None = None  # "mirrored": tf.distribute.MirroredStrategy over the visible GPUs
    # auxiliary subtype head (bloodcell/subtypes.py): class name -> subtypes read from file-name
    # prefixes (PBC: ig: [MY, MMY, PMY], neutrophil: [BNE, SNE]); a second softmax over them is
    # trained beside the classes, with this weight on its loss, and dropped afterwards
    subtypes: dict[str, list[str]] | None = None
    subtype_loss_weight: float = 0.5

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | None) -> "TrainConfig":
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        if isinstance(cfg.get("augment"), dict):
            cfg["augment"] = OnlineAugment(**cfg["augment"])
        out = cls(**cfg)
        if out.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {out.optimizer!r}; choose one of {OPTIMIZERS}")
        if out.lr_schedule not in ("plateau", "cosine"):
            raise ValueError(f"unknown lr_schedule {out.lr_schedule!r}; choose 'plateau' or 'cosine'")
        if out.swa_epochs and (out.lr_schedule != "cosine" or not out.recalibrate_final
                               or not 0 < out.swa_epochs < out.epochs):
            raise ValueError(f"swa_epochs {out.swa_epochs} needs lr_schedule 'cosine', recalibrate_final (averaged weights "
                             f"need their batch norm recomputed) and a value below epochs ({out.epochs})")
        if out.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"unknown mixed_precision {out.mixed_precision!r}; choose one of {MIXED_PRECISION}")
        if out.subtypes is not None and not (
                isinstance(out.subtypes, dict) and all(isinstance(v, list) for v in out.subtypes.values())):
            raise ValueError(f"subtypes must map class names to lists of subtypes, e.g. {{ig: [MY, MMY, PMY]}}, got {out.subtypes!r}")
        if not out.subtype_loss_weight > 0:
            raise ValueError(f"subtype_loss_weight must be above 0, got {out.subtype_loss_weight}")
        if out.distribute not in (None, "mirrored"):
            raise ValueError(f"unknown distribute {out.distribute!r}; choose null or 'mirrored'")
        return out

    @property
    def compute_policy(self) -> str:
        """The Keras dtype policy the model is built and trained under on this machine."""
        choice = self.mixed_precision
        if choice == "auto":
            choice = "bfloat16" if cpu_has_native_bfloat16() else False
        if choice is True:
            choice = "float16"
        return f"mixed_{choice}" if choice else "float32"


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU advertises bfloat16 matrix instructions (Intel AMX or AVX512-BF16), which
    oneDNN uses for bfloat16 convolutions; without them bfloat16 is emulated and slower."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@contextlib.contextmanager
def compute_scope(cfg: TrainConfig) -> Iterator[None]:
    """Build, compile and fit inside this: the mixed-precision policy and distribution strategy
    the config asks for, restored afterwards (other steps in the process are not affected)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(cfg.compute_policy)
    try:
        if cfg.distribute == "mirrored":
            with tf.distribute.MirroredStrategy().scope():
                yield
        else:
            yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def in_current_scope(model: keras.Model) -> keras.Model:
    """``model`` with its variables owned by the active distribution strategy: a model made
    outside ``compute_scope`` (e.g. loaded from an artifact) is reloaded from a temporary
    ``.keras`` file under the strategy; without a strategy it is returned as it is."""
    if not tf.distribute.has_strategy():
        return model
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        return keras.saving.load_model(path, safe_mode=True)


def compile_model(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int | None = None,
                  subtype_head: bool = False) -> None:
    """Compile with the configured optimizer, LR schedule and loss; ``subtype_head``: ``model`` is
    a ``models.with_subtype_head`` training model (a loss for each output, accuracy of the classes)."""
    lr: Any = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        if not steps_per_epoch:
            raise ValueError("lr_schedule 'cosine' needs steps_per_epoch")
        lr = keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=steps_per_epoch * (cfg.epochs - cfg.swa_epochs), alpha=cfg.min_learning_rate / cfg.learning_rate,
        )
    if cfg.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = keras.optimizers.Lion(learning_rate=lr, weight_decay=cfg.weight_decay)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    if subtype_head:
        model.compile(optimizer=optimizer, loss={"probabilities": loss, "subtype": loss},
                      loss_weights={"probabilities": 1.0, "subtype": cfg.subtype_loss_weight},
                      metrics={"probabilities": ["accuracy"]})
    else:
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def train_model(
    model: keras.Model, train: Dataset, val: Dataset, cfg: TrainConfig,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> dict[str, list[float]]:
    """Fit ``model`` (compiled here with the configured optimizer and LR schedule) and return the
    Keras history. With ``cfg.subtypes`` a subtype head is trained beside the model's output
    (``bloodcell.subtypes``); ``model`` itself stays without it, and the history's ``accuracy``
    and ``val_accuracy`` are those of the classes."""
    keras.utils.set_random_seed(cfg.seed)
    n = len(train.class_names)
    steps = -(-len(train) // cfg.batch_size)
    fine = fine_classes(train, cfg.subtypes) if cfg.subtypes else []
    fitted = with_subtype_head(model, len(fine)) if fine else model
    if fine and cfg.verbose:
        print(f"Subtype head over {len(fine)} fine classes: {fine}")

    def targets(ds: Dataset) -> Any:
        onehot = np.eye(n, dtype=np.float32)[ds.labels]
        return {"probabilities": onehot, "subtype": fine_targets(ds, fine)} if fine else onehot

    # one endless input pipeline for the whole fit, not a new iterator an epoch
    train_data = make_dataset(train, cfg.batch_size, cfg.augment, shuffle=True, seed=cfg.seed, repeat=True,
                              targets=targets(train))
    val_data = make_dataset(val, 256, targets=targets(val))
    compile_model(fitted, cfg, steps_per_epoch=steps, subtype_head=bool(fine))
    accuracy = "probabilities_accuracy" if fine else "accuracy"
    originals = clean_originals(train)
    callbacks: list[keras.callbacks.Callback] = []
    if cfg.recalibrate_samples_per_epoch:
        callbacks.append(RecalibrateEachEpoch(originals, cfg.recalibrate_samples_per_epoch, 256, cfg.augment, cfg.seed))
    if cfg.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=cfg.reduce_lr_factor, patience=cfg.reduce_lr_patience,
            min_lr=cfg.min_learning_rate, verbose=1,
        ))
    callbacks += [
        keras.callbacks.EarlyStopping(
            monitor=f"val_{accuracy}", mode="max", patience=cfg.early_stopping_patience, restore_best_weights=True, verbose=1,
        ),
        *(extra_callbacks or []),
    ]
    swa = None
    if cfg.swa_epochs:  # right after the backup (below): each epoch's snapshot is saved right after its checkpoint
        swa = WeightAveraging(cfg.epochs - cfg.swa_epochs, os.path.join(cfg.backup_dir, "swa") if cfg.backup_dir else None)
        callbacks.insert(0, swa)
    if cfg.backup_dir:  # first: restores before and saves ahead of the other callbacks
        os.makedirs(cfg.backup_dir, exist_ok=True)
        callbacks.insert(0, keras.callbacks.BackupAndRestore(cfg.backup_dir))
    history = fitted.fit(train_data, validation_data=val_data, epochs=cfg.epochs, steps_per_epoch=steps,
                         callbacks=callbacks, verbose=cfg.verbose, shuffle=False)
    if swa is not None:
        averaged = swa.apply()
        if cfg.verbose:
            print(f"Weight averaging: the model is the mean of epochs {[e + 1 for e in averaged]}")
    if cfg.recalibrate_final:
        recalibrate_on_originals(model, originals, cfg)
    rename = {accuracy: "accuracy", f"val_{accuracy}": "val_accuracy"}
    return {rename.get(k, k): [float(v) for v in vals] for k, vals in history.history.items()}


@dataclass
class TrainingHistory:
    """Per-epoch Keras metrics plus notes on the run (wall time, skipped, ...)."""

    history: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(next(iter(self.history.values()), []))


FINE_TUNE_DEFAULTS: dict[str, Any] = {
    "epochs": 20, "optimizer": "adamw", "learning_rate": 1e-5, "weight_decay": 0.004,
    "reduce_lr_patience": 5, "reduce_lr_factor": 0.5, "early_stopping_patience": 10,
}


def fine_tune_config(training: dict[str, Any] | None) -> TrainConfig:
    """The fine-tuning recipe (AdamW 1e-5, halve the LR after 5 flat epochs, early stopping that
    restores the best weights), with the config's ``training`` options on top."""
    return TrainConfig.from_dict({**FINE_TUNE_DEFAULTS, **(training or {})})


def fine_tune_model(
    model: keras.Model, train: Dataset, val: Dataset, blocks: int, l2: float, cfg: TrainConfig,
) -> tuple[keras.Model, dict[str, list[float]], list[str]]:
    """Unfreeze the top ``blocks`` backbone stages (batch norm stays frozen, L2 on the unfrozen
    convs) and fit again. Returns the model (the same one, or its copy under the active
    distribution strategy), the Keras history and the unfrozen layer names."""
    from bloodcell.models import unfreeze_top

    model = in_current_scope(model)
    unfrozen = unfreeze_top(model, blocks, l2)
    return model, train_model(model, train, val, cfg), unfrozen
