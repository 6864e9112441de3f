"""Images stored as shards: ``.npy`` files of about ``SHARD_BYTES`` each, written and read through
ZenML's ``fileio`` (so a local folder, ``s3://``, ``gs://`` or ``az://``), each with the SHA-256
of its bytes computed while it is written and checked when it is read.

Why ``.npy`` shards of 64 MiB: ``benchmarks/shard_formats.py`` (docs/operations.md) measured them
fastest to write, read and index of the formats tried (TFRecord raw or PNG, ArrayRecord), by
enough that storage is never the slow part of a step; a shard is one object-store request and
bounds what a reader holds, whatever the image size (2,427 images at 96 px, 341 at 256 px).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from zenml.io import fileio

SHARD_BYTES = 64 * 2**20


def images_per_shard(image_shape: tuple[int, ...], shard_bytes: int = SHARD_BYTES) -> int:
    """How many uint8 images of ``image_shape`` make a shard of at most ``shard_bytes`` (at least
    1)."""
    return max(1, shard_bytes // int(np.prod(image_shape)))


@dataclass(frozen=True)
class Shard:
    """One shard file: its name in the folder, how many images it holds, the SHA-256 of its
    bytes."""

    file: str
    count: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def write_shards(
    folder: str,
    images: np.ndarray | Iterator[np.ndarray],
    per_shard: int | None = None,
    prefix: str = "images",
    first: int = 0,
) -> list[Shard]:
    """Write ``images`` (one uint8 (N, H, W, 3) array, or an iterator of such batches, for data that
    does not fit in memory) to ``<folder>/<prefix>-<first>.npy``, ``<first + 1>``, ... (5 digits)
    and return the shards in order. If anything fails (a batch the iterator cannot make, a write),
    the shards written so far are removed before the error goes on."""
    fileio.makedirs(folder)
    batches = iter([images]) if isinstance(images, np.ndarray) else iter(images)
    shards: list[Shard] = []
    pending: list[np.ndarray] = []
    held = 0

    def flush(part: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(part), allow_pickle=False)
        data = buf.getbuffer()  # the bytes written, without a copy of the shard
        name = f"{prefix}-{first + len(shards):05d}.npy"
        with fileio.open(_join(folder, name), "wb") as f:
            f.write(data)
        shards.append(Shard(name, len(part), hashlib.sha256(data).hexdigest()))

    try:
        for batch in batches:
            if batch.dtype != np.uint8 or batch.ndim != 4:
                raise ValueError(
                    f"shards hold uint8 (N, H, W, C) images, got {batch.dtype} {batch.shape}"
                )
            per = per_shard or images_per_shard(batch.shape[1:])
            pending.append(batch)
            held += len(batch)
            while held >= per:
                joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                flush(joined[:per])
                pending, held = [joined[per:]], held - per
        if held or not shards:
            flush(np.concatenate(pending) if pending else np.zeros((0, 0, 0, 3), np.uint8))
    except BaseException:  # a bad image, an interrupt: no part of the set stays behind
        for shard in shards:
            fileio.remove(_join(folder, shard.file))
        raise
    return shards


def read_shard(folder: str, shard: Shard) -> np.ndarray:
    """One shard's images, after checking its bytes against its SHA-256."""
    path = _join(folder, shard.file)
    with fileio.open(path, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        raise ValueError(
            f"shard {path} is corrupt: its bytes no longer match the SHA-256 written with it"
        )
    images = np.load(io.BytesIO(data), allow_pickle=False)
    if len(images) != shard.count:
        raise ValueError(
            f"shard {path} holds {len(images)} images, its manifest says {shard.count}"
        )
    return images
