"""Where and in what precision a model computes: the Keras mixed-precision policy (float16 on
GPUs, bfloat16 on CPUs that have it) and the distribution strategy (all visible GPUs)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import keras
import tensorflow as tf

MIXED_PRECISION = (False, True, "float16", "bfloat16", "auto")
DISTRIBUTE = (None, "mirrored")


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


@contextlib.contextmanager
def compute_scope(policy: str, distribute: str | None = None) -> Iterator[None]:
    """Build, compile and fit inside this: the dtype ``policy`` and the distribution strategy
    (``mirrored``: tf.distribute.MirroredStrategy over the visible GPUs), restored afterwards
    (other steps in the process are not affected)."""
    check_distribute(distribute)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        if distribute == "mirrored":
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
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        return keras.saving.load_model(path, safe_mode=True)
