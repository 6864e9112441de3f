"""Stratified, seeded train/val/test split that keeps identical images together.

Real data holds exact duplicates under different names (pbc96 has 11 pairs), and a duplicate in
train and test would leak. So the split is made over groups of identical images (by content
hash), stratified by the group's label, and every member goes where its group goes.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from bloodcell.data.dataset import Dataset


def stratified_split(
    ds: Dataset, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42
) -> tuple[Dataset, Dataset, Dataset]:
    """Split ``ds`` into train/val/test with the class proportions of the whole."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) and "
            "sum below 1"
        )
    if len(set(ds.ids)) != len(ds):
        dup = next(i for i, c in _counts(ds.ids).items() if c > 1)
        raise ValueError(
            f"sample id {dup!r} occurs more than once (rule: ids are unique before splitting)"
        )
    _, first, group_of = np.unique(ds.row_hashes(), return_index=True, return_inverse=True)
    group_of = group_of.reshape(-1)
    groups = np.arange(len(first))
    group_labels = ds.labels[first]
    rest, test_g = train_test_split(
        groups, test_size=test_fraction, stratify=group_labels, random_state=seed
    )
    val_of_rest = val_fraction / (1.0 - test_fraction)
    train_g, val_g = train_test_split(
        rest, test_size=val_of_rest, stratify=group_labels[rest], random_state=seed
    )
    train, val, test = (np.flatnonzero(np.isin(group_of, g)) for g in (train_g, val_g, test_g))
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
