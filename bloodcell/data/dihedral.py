"""The 8 rotations and reflections of a square image (the dihedral group D4): cells have no
orientation, so training augments with them and test-time augmentation averages over them.

Transform ``k`` (0..7) is: transpose if bit 2, then flip left-right if bit 0, then flip up-down
if bit 1. One definition serves NumPy arrays and Keras tensors (``xp`` is ``numpy`` or
``keras.ops``: both have ``transpose`` and ``flip``); images are batches (N, H, W, C).
"""

from __future__ import annotations

from typing import Any

import numpy as np

COUNT = 8


def transform(images: Any, k: int, xp: Any = np) -> Any:
    """Batch ``images`` (N, H, W, C) through dihedral transform ``k``."""
    if k & 4:
        images = xp.transpose(images, (0, 2, 1, 3))
    if k & 1:
        images = xp.flip(images, axis=2)
    if k & 2:
        images = xp.flip(images, axis=1)
    return images


def index_table(height: int, width: int) -> np.ndarray:
    """(8, H*W) int32: row ``k`` lists, for each output pixel, the input pixel of transform ``k``,
    so that one gather applies a different transform to each image of a batch."""
    if height != width:
        raise ValueError(f"the 8 rotations/reflections need square images, got {height}x{width}")
    grid = np.arange(height * width).reshape(1, height, width, 1)
    return np.stack([transform(grid, k).reshape(-1) for k in range(COUNT)]).astype(np.int32)


def apply_each(images: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """NumPy images (N, H, W, C), image ``i`` through transform ``ks[i]``."""
    n, h, w, c = images.shape
    rows = index_table(h, w)[np.asarray(ks)]
    return np.take_along_axis(images.reshape(n, h * w, c), rows[..., None], axis=1).reshape(
        images.shape
    )
