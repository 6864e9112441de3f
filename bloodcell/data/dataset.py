"""The dataset that flows between pipeline steps: labels, ids and provenance in memory, the pixels
in memory or, for a loaded artifact, in shards read on demand
(``bloodcell.data.sharded_images``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bloodcell import CLASS_NAMES
from bloodcell.data.sharded_images import ShardedImages, concat_images, row_hashes

UNLABELED = -1

# Sample ids trace each sample to its source. A file's id is its path relative to the source
# folder; an npz row's is ``file.npz:row`` (``file.npz:part:row`` for MedMNIST parts); a sample that
# rebalancing generated from an original is ``<original id>#aug<k>``. These functions are the one
# place that writes and reads those forms.
GENERATED = "#aug"


def npz_id(file_name: str, part: str, row: int) -> str:
    """The id of row ``row`` of an npz array (``part``: a MedMNIST part such as ``train``, or
    "")."""
    return f"{file_name}:{part}:{row}" if part else f"{file_name}:{row}"


def generated_id(source: str, k: int) -> str:
    """The id of the ``k``-th sample generated from the original ``source``."""
    return f"{source}{GENERATED}{k}"


def is_generated(sample_id: str) -> bool:
    return GENERATED in sample_id


def source_id(sample_id: str) -> str:
    """The original a sample comes from: itself, or the source of a generated sample."""
    return sample_id.partition(GENERATED)[0]


@dataclass
class Dataset:
    """Images, labels and traceable ids of one set of samples.

    ``images`` is uint8 (N, H, W, 3), an array or a lazy ``ShardedImages``; ``labels`` int64 (N,)
    indexing ``class_names``, or
    ``UNLABELED`` (-1) for images to predict on;
    ``ids`` names where each sample came from (a file path, or ``file.npz:row``).
    ``info`` carries provenance notes (source, conversions, ...) and must be JSON-serialisable.
    """

    images: np.ndarray | ShardedImages
    labels: np.ndarray
    ids: list[str]
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.ids = [str(i) for i in self.ids]
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        n = len(self.images)
        if len(self.labels) != n or len(self.ids) != n:
            raise ValueError(f"{n} images but {len(self.labels)} labels and {len(self.ids)} ids")

    def __len__(self) -> int:
        return len(self.labels)

    def row_hashes(self) -> np.ndarray:
        """The SHA-1 of each image's pixels (``S20``): equal hashes mean identical images. A
        loaded artifact has them from its manifest; an array's are computed each time (it may
        have been changed in place)."""
        if isinstance(self.images, ShardedImages):
            return self.images.row_hashes()
        return row_hashes(self.images)

    def image_hashes(self) -> list[str]:
        """``row_hashes`` as hex strings (numpy drops an ``S20`` value's trailing zero bytes: put
        back)."""
        return [h.ljust(20, b"\0").hex() for h in self.row_hashes()]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the content: each image's SHA-1, labels, ids and class names (the same for
        the same content, in memory or in shards)."""
        h = hashlib.sha256()
        h.update(repr((tuple(self.images.shape), list(self.class_names))).encode())
        h.update(self.row_hashes().tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        h.update("\n".join(self.ids).encode())
        return h.hexdigest()

    @property
    def labelled(self) -> bool:
        return bool(np.all(self.labels != UNLABELED))

    def class_counts(self) -> dict[str, int]:
        """Samples per class (unlabelled samples are not counted)."""
        counts = np.bincount(self.labels[self.labels >= 0], minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def sample(self, samples: int, seed: int) -> Dataset:
        """``samples`` samples drawn without replacement with ``seed``, in their original order;
        all of them when ``samples`` is 0 or at least the dataset's size."""
        if not 0 < samples < len(self):
            return self
        return self.subset(np.sort(np.random.default_rng(seed).permutation(len(self))[:samples]))

    def preview(self, samples: int, seed: int = 0) -> Dataset:
        """Up to ``samples`` samples for a picture of the set, about as many of each class, each
        class's from one shard (drawn with ``seed``) that holds it: a picture reads at most a shard
        a class, however many shards the set has (``sample`` would touch every one)."""
        if not isinstance(self.images, ShardedImages) or len(self) <= samples:
            return self.sample(samples, seed)
        rng = np.random.default_rng(seed)
        part_of = self.images.part_of_rows()
        classes = np.unique(self.labels)
        picked = []
        for c in classes:
            rows = np.flatnonzero(self.labels == c)
            rows = rows[part_of[rows] == part_of[rows[rng.integers(len(rows))]]]
            picked.append(rng.permutation(rows)[: max(samples // len(classes), 1)])
        return self.subset(np.sort(np.concatenate(picked)))

    def originals(self) -> Dataset:
        """The samples that rebalancing did not generate."""
        return self.subset([i for i, sid in enumerate(self.ids) if not is_generated(sid)])

    def subset(self, index: np.ndarray | list[int], **info: Any) -> Dataset:
        """The samples at ``index`` (in that order), keeping class names and provenance."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        sharded = isinstance(self.images, ShardedImages)
        return Dataset(
            images=self.images.subset(index) if sharded else self.images[index],
            labels=self.labels[index],
            ids=[self.ids[i] for i in index],
            class_names=list(self.class_names),
            info={**self.info, **info},
        )

    def concat_images(self, more: np.ndarray | ShardedImages) -> np.ndarray | ShardedImages:
        """This dataset's images followed by ``more``: sharded if either is (nothing is read), else
        one array."""
        return concat_images(self.images, more)
