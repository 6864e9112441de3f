"""Where and in what precision a model computes: the Keras mixed-precision policy (float16 on
GPUs, bfloat16 on CPUs that have it) and the distribution strategy (all the GPUs of this machine;
without GPUs, its logical CPU devices when it was split into several)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator

import keras
import tensorflow as tf

MIXED_PRECISION = (False, True, "float16", "bfloat16", "auto")
DISTRIBUTE = (None, "mirrored")

logger = logging.getLogger("bloodcell.model.compute")


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU advertises bfloat16 matrix instructions (Intel AMX or AVX512-BF16), which
    oneDNN uses for bfloat16 convolutions; without them bfloat16 is emulated and slower."""
    try:
        with open(cpuinfo) as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def compute_policy(mixed_precision: bool | str) -> str:
    """The Keras dtype policy for a ``mixed_precision`` choice on this machine: ``float16`` (or
    true): GPUs; ``bfloat16``: CPUs with native bf16; ``auto``: bfloat16 where the CPU has it, else
    float32; false: float32. Variables and outputs stay float32 under the mixed policies."""
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"unknown mixed_precision {mixed_precision!r}; choose one of {MIXED_PRECISION}"
        )
    choice = mixed_precision
    if choice == "auto":
        choice = "bfloat16" if cpu_has_native_bfloat16() else False
    if choice is True:
        choice = "float16"
    return f"mixed_{choice}" if choice else "float32"


def check_distribute(distribute: str | None) -> None:
    if distribute not in DISTRIBUTE:
        raise ValueError(f"unknown distribute {distribute!r}; choose null or 'mirrored'")


def mirrored_devices() -> list[str]:
    """The devices ``distribute: mirrored`` mirrors the model over, as logical device names: every
    visible GPU of this machine (what ``tf.distribute.MirroredStrategy()`` picks by itself); with
    none, the logical CPU devices when there are more than one (a CPU split with
    ``tf.config.set_logical_device_configuration`` before TensorFlow starts, as
    tests/test_mirrored.py does), else the one CPU (a single replica: no speed-up)."""
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus]
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """``tf.distribute.MirroredStrategy`` over ``mirrored_devices()``, saying how many replicas it
    has (a warning when it has one)."""
    devices = mirrored_devices()
    strategy = tf.distribute.MirroredStrategy(devices)
    n = strategy.num_replicas_in_sync
    (logger.info if n > 1 else logger.warning)(
        "distribute: mirrored over %d replica(s): %s", n, ", ".join(devices)
    )
    return strategy


@contextlib.contextmanager
def compute_scope(policy: str, distribute: str | None = None) -> Iterator[None]:
    """Build, compile and fit inside this: the dtype ``policy`` and the distribution strategy
    (``mirrored``: ``mirrored_strategy()``, over the GPUs of this machine), restored afterwards
    (other steps in the process are not affected).

    Under ``mirrored`` the model's variables are mirrored on every replica and Keras ``fit`` splits
    each batch of the input pipeline (the *global* batch, ``training.batch_size``, best a multiple
    of the replica count) across the replicas, sums their gradients (of each replica's mean loss
    over the replica count) and applies one update to every copy: each replica computes
    ``batch_size / replicas`` images a step, and the updates are those of a one-device fit on the
    same batches, up to float rounding (tests/test_mirrored.py checks this). Not quite the same
    fit: batch norm normalises with each replica's own statistics, dropout draws a mask a
    replica, and Keras 3 draws a first batch to build the model and then starts the input
    pipeline again, at its next shuffle (so the batches come in another order)."""
    check_distribute(distribute)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        if distribute == "mirrored":
            with mirrored_strategy().scope():
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
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        return keras.saving.load_model(path, safe_mode=True)
