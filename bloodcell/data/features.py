"""Per-image features the outlier filter and the ``ingest`` expectations score: what can be
computed from each image alone, so that a chunk of the source computes its own (the fan-out
path) and the dataset-level work (robust z-scores, the PCA, duplicate groups) runs on them later.

Every feature is computed from the image alone and exactly (sums of integers), so a chunk's
features equal the single path's for the same images, whatever the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bloodcell.data.stain import channel_stats


class StoredArray:
    """An array kept where it is stored and read whole each time it is asked for
    (``np.asarray``, indexing), never held: a loaded artifact's thumbnails, so that a step given
    every chunk's features holds one chunk's at a time."""

    def __init__(self, read: Callable[[], np.ndarray], length: int):
        self._read, self._length = read, length

    def __len__(self) -> int:
        return self._length

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._read()
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._read()[key]


@dataclass
class ImageFeatures:
    """For each image (row ``i`` is ``ids[i]``): per-channel ``means`` and ``stds`` (N, 3) on
    0..255, the ``texture`` energy (mean |neighbour difference|), a 16x16 difference ``phash``
    (N, 32) uint8, and the ``thumbs`` (N, thumb*thumb*3) float32 the PCA scores (in memory, or a
    :class:`StoredArray` for a loaded artifact)."""

    ids: list[str]
    means: np.ndarray
    stds: np.ndarray
    texture: np.ndarray
    phash: np.ndarray
    thumbs: np.ndarray | StoredArray
    thumb: int

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("means", "stds", "texture", "phash", "thumbs"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{len(getattr(self, name))} rows of {name} for {n} images")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> ImageFeatures:
        rows = np.asarray(rows, dtype=np.int64)
        return ImageFeatures(
            [self.ids[i] for i in rows],
            self.means[rows],
            self.stds[rows],
            self.texture[rows],
            self.phash[rows],
            self.thumbs[rows],
            self.thumb,
        )


def image_features(images: np.ndarray, ids: Sequence[str], thumb: int) -> ImageFeatures:
    """Every feature of ``images`` (uint8 (N, H, W, 3), an array or sharded), 256 at a time."""
    from bloodcell.data.outliers import perceptual_hashes, texture_energy, thumbnails

    n = len(images)
    means, stds = np.empty((n, 3)), np.empty((n, 3))
    texture = np.empty(n)
    phash = np.empty((n, 32), np.uint8)
    thumbs = np.empty((n, thumb * thumb * 3), np.float32)
    for a in range(0, n, 256):
        block = np.asarray(images[a : a + 256])
        means[a : a + 256], stds[a : a + 256] = channel_stats(block)
        texture[a : a + 256] = texture_energy(block)
        phash[a : a + 256] = perceptual_hashes(block)
        thumbs[a : a + 256] = thumbnails(block, thumb)
    return ImageFeatures(list(ids), means, stds, texture, phash, thumbs, thumb)


def concat_features(parts: Sequence[ImageFeatures]) -> ImageFeatures:
    """The parts' rows one after the other (all computed at the same thumbnail size)."""
    thumbs = {p.thumb for p in parts}
    if len(thumbs) != 1:
        raise ValueError(f"features at different thumbnail sizes {sorted(thumbs)}")
    return ImageFeatures(
        [i for p in parts for i in p.ids],
        np.concatenate([p.means for p in parts]),
        np.concatenate([p.stds for p in parts]),
        np.concatenate([p.texture for p in parts]),
        np.concatenate([p.phash for p in parts]),
        np.concatenate([p.thumbs for p in parts]),
        thumbs.pop(),
    )
