"""Stratified, seeded train/val/test split."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from bloodcell.dataset import Dataset


def stratified_split(
    ds: Dataset, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42
) -> tuple[Dataset, Dataset, Dataset]:
    """Split ``ds`` into train/val/test with the class proportions of the whole."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) and sum below 1")
    if len(set(ds.ids)) != len(ds):
        dup = next(i for i, c in _counts(ds.ids).items() if c > 1)
        raise ValueError(f"sample id {dup!r} occurs more than once (rule: ids are unique before splitting)")
    idx = np.arange(len(ds))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=ds.labels, random_state=seed)
    val_of_rest = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_of_rest, stratify=ds.labels[rest], random_state=seed)
    return (
        ds.subset(np.sort(train), split="train"),
        ds.subset(np.sort(val), split="val"),
        ds.subset(np.sort(test), split="test"),
    )


def _counts(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out
