"""A lazy, read-only image array over shards: what a step gets for a dataset artifact's pixels.

``ShardedImages`` behaves like a uint8 (N, H, W, C) array for ``len``, ``shape``, indexing and
iteration, but reads a shard only when one of its rows is asked for (one shard is kept, the last
read). Its rows are ``index`` into the concatenation of its parts; a part is a stored shard
(``bloodcell.data.shards``: a folder and a ``Shard``) or an array in memory (images a step has just
made, written as new shards when the artifact is saved). Taking a subset or appending images
composes indices and parts: no pixels are copied or read. Each row's SHA-1 (``row_hashes``)
travels with it, from the artifact's manifest, so a dataset's fingerprint needs no pixels either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bloodcell.data import shards

Part = tuple[str, shards.Shard] | np.ndarray
HASH = np.dtype("S20")  # SHA-1 digests


def row_hashes(images: Any) -> np.ndarray:
    """The SHA-1 of each image's pixels (uint8, C order), as an (N,) ``S20`` array."""
    return np.array(
        [hashlib.sha1(np.ascontiguousarray(img).tobytes()).digest() for img in images], dtype=HASH
    )


def _consecutive(rows: np.ndarray) -> bool:
    return (
        len(rows) > 0
        and int(rows[-1]) - int(rows[0]) == len(rows) - 1
        and bool(np.all(np.diff(rows) == 1))
    )


def _count(part: Part) -> int:
    return len(part) if isinstance(part, np.ndarray) else part[1].count


class ShardedImages:
    """Rows ``index`` (default: all, in order) of the images in ``parts``, each (H, W, C) =
    ``image_shape``."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(
        self,
        parts: Sequence[Part],
        image_shape: Sequence[int],
        index: np.ndarray | None = None,
        hashes: np.ndarray | None = None,
    ):
        self.parts = list(parts)
        self.image_shape = tuple(int(d) for d in image_shape)
        for p in self.parts:
            if isinstance(p, np.ndarray) and (
                p.dtype != np.uint8 or p.shape[1:] != self.image_shape
            ):
                raise ValueError(
                    f"an in-memory part must be uint8 {self.image_shape} images, got {p.dtype} "
                    f"{p.shape}"
                )
        self._starts = np.cumsum([0] + [_count(p) for p in self.parts])
        total = int(self._starts[-1])
        self.index = (
            np.arange(total, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
        )
        if len(self.index) and not (self.index.min() >= 0 and self.index.max() < total):
            raise ValueError(f"index out of range for {total} images")
        if hashes is not None and len(hashes) != len(self.index):
            raise ValueError(f"{len(hashes)} row hashes for {len(self.index)} rows")
        self._hashes = None if hashes is None else np.asarray(hashes, dtype=HASH)
        self._cached: tuple[int, np.ndarray] | None = None

    def row_hashes(self) -> np.ndarray:
        """Each row's SHA-1, as given or else computed once by reading the rows."""
        if self._hashes is None:
            self._hashes = (
                np.concatenate([row_hashes(b) for b in self.batches()])
                if len(self)
                else np.zeros(0, HASH)
            )
        return self._hashes

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.image_shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.index)

    def _part_of(self, where: np.ndarray) -> np.ndarray:
        """The part holding each position ``where`` in the concatenation of the parts."""
        return np.searchsorted(self._starts, where, side="right") - 1

    def part_of_rows(self) -> np.ndarray:
        """For each row, the index of the part (shard or in-memory array) that holds it."""
        return self._part_of(self.index)

    def part_offsets(self) -> np.ndarray:
        """Where each part begins in the concatenation of the parts (one more entry: the total)."""
        return self._starts

    def _part(self, k: int) -> np.ndarray:
        part = self.parts[k]
        if isinstance(part, np.ndarray):
            return part
        if self._cached is None or self._cached[0] != k:
            self._cached = (k, shards.read_shard(*part))
        return self._cached[1]

    def take(self, rows: Any) -> np.ndarray:
        """The images at ``rows`` (positions in this array), as one array; each shard they touch is
        read once."""
        where = self.index[np.asarray(rows, dtype=np.int64).reshape(-1)]
        out = np.empty((len(where), *self.image_shape), np.uint8)
        part_of = self._part_of(where)
        for k in np.unique(part_of):
            mask = part_of == k
            rows_in, rows_out = where[mask] - self._starts[k], np.flatnonzero(mask)
            if _consecutive(rows_in) and _consecutive(rows_out):  # a run of rows: one block copy
                out[rows_out[0] : rows_out[-1] + 1] = self._part(int(k))[
                    rows_in[0] : rows_in[-1] + 1
                ]
            else:
                out[rows_out] = self._part(int(k))[rows_in]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.take([key if key >= 0 else len(self) + key])[0]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        key = np.asarray(key)
        return self.take(np.flatnonzero(key) if key.dtype == bool else key)

    def batches(self, size: int = 1024) -> Iterator[np.ndarray]:
        """The images in order, ``size`` at a time (a shard is read once when the rows follow the
        shards)."""
        for start in range(0, len(self), size):
            yield self.take(np.arange(start, min(start + size, len(self))))

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.batches():
            yield from batch

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All the images in memory: for the code that has not learnt to stream yet."""
        out = self.take(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype: Any) -> np.ndarray:
        """All the images in memory as ``dtype``, as ``numpy.ndarray.astype`` would give them."""
        return self.__array__(dtype)

    def subset(self, rows: Any) -> ShardedImages:
        """The images at ``rows``, sharing this array's parts (nothing is read)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        return ShardedImages(
            self.parts,
            self.image_shape,
            self.index[rows],
            None if self._hashes is None else self._hashes[rows],
        )

    def append(self, images: np.ndarray | ShardedImages) -> ShardedImages:
        """These images followed by ``images`` (nothing is read but what has no hashes yet)."""
        other = (
            images
            if isinstance(images, ShardedImages)
            else ShardedImages([images], self.image_shape)
        )
        if other.image_shape != self.image_shape:
            raise ValueError(f"cannot append {other.image_shape} images to {self.image_shape} ones")
        offset = int(self._starts[-1])
        return ShardedImages(
            self.parts + other.parts,
            self.image_shape,
            np.concatenate([self.index, other.index + offset]),
            np.concatenate([self.row_hashes(), other.row_hashes()]),
        )


def concat_images(
    first: np.ndarray | ShardedImages, more: np.ndarray | ShardedImages
) -> np.ndarray | ShardedImages:
    """``first`` followed by ``more``: sharded if either is (nothing is read), else one array."""
    if isinstance(first, ShardedImages):
        return first.append(more)
    if isinstance(more, ShardedImages):
        return ShardedImages([first], first.shape[1:]).append(more)
    return np.concatenate([first, more])


def write_hashed(
    sink: str, chunks: Iterator[np.ndarray], image_shape: Sequence[int], prefix: str = "source"
) -> ShardedImages:
    """Write ``chunks`` (uint8 image batches) as shards ``<prefix>-00000.npy``, ... under ``sink``,
    hashing their rows on the way, and return the lazy handle over them. On an error the shards
    written so far are removed (``shards.write_shards``): a failed step leaves no part of an
    artifact."""
    hashes: list[np.ndarray] = []

    def hashed() -> Iterator[np.ndarray]:
        for c in chunks:
            hashes.append(row_hashes(c))
            yield c

    written = shards.write_shards(sink, hashed(), prefix=prefix)
    return ShardedImages(
        [(sink, s) for s in written], tuple(image_shape), hashes=np.concatenate(hashes)
    )
