"""Decoding image files in parallel: one thread a core (PIL decodes and resizes without the GIL),
a shard's worth at a time, in order, into one array or straight into shards (``collect``). Each file
goes
through ``bloodcell.data.images.load_image``; the first bad file (in order) raises its
``IngestError``."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bloodcell.data.images import load_image
from bloodcell.data.sharded_images import ShardedImages, write_hashed
from bloodcell.data.shards import images_per_shard


def decoded(paths: list[Path], image_size: int, conversions: Counter) -> Iterator[np.ndarray]:
    """The images of ``paths``, a shard's worth at a time, counting conversions into
    ``conversions``."""
    from tqdm import tqdm  # comes with zenml's dependencies

    chunk = images_per_shard((image_size, image_size, 3))
    with (
        ThreadPoolExecutor(os.cpu_count() or 1) as pool,
        tqdm(
            total=len(paths),
            desc="reading images",
            unit="img",
            mininterval=2.0,
            disable=len(paths) < 1000,
        ) as bar,
    ):
        for start in range(0, len(paths), chunk):
            counts = [Counter() for _ in paths[start : start + chunk]]
            out = np.stack(
                list(
                    pool.map(
                        load_image, paths[start : start + chunk], [image_size] * len(counts), counts
                    )
                )
            )
            for c in counts:
                conversions.update(c)
            bar.update(len(out))
            yield out


def collect(
    chunks: Iterator[np.ndarray], image_size: int, sink: str | None
) -> np.ndarray | ShardedImages:
    """Image chunks (from ``decoded`` or an array read in parts) as one uint8 array, or, with
    ``sink``, written there as shards ``source-00000.npy``, ... (on an error, those written so far
    are removed: a failed step leaves no part of an artifact)."""
    if sink is not None:
        return write_hashed(sink, chunks, (image_size, image_size, 3))
    return np.concatenate(list(chunks))
