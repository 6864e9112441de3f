"""The PCA filter flags injected non-cell images and keeps real cells."""

from __future__ import annotations

import numpy as np

from bloodcell.dataset import Dataset
from bloodcell.outliers import filter_outliers


def _inject(ds: Dataset) -> tuple[Dataset, list[str]]:
    rng = np.random.default_rng(0)
    flat = np.full((1, 96, 96, 3), 30, np.uint8)
    noise = rng.integers(0, 256, (1, 96, 96, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, 96, dtype=np.float32)
    gradient = np.broadcast_to(ramp[None, :, None, None], (1, 96, 96, 3)).transpose(0, 2, 1, 3).astype(np.uint8)
    bad = np.concatenate([flat, noise, gradient])
    ids = ["injected/flat", "injected/noise", "injected/gradient"]
    out = Dataset(
        images=np.concatenate([ds.images, bad]),
        labels=np.concatenate([ds.labels, [0, 1, 2]]),
        ids=ds.ids + ids,
    )
    return out, ids


def test_injected_outliers_are_removed_and_cells_kept(sample_dataset):
    ds, bad_ids = _inject(sample_dataset)
    result = filter_outliers(ds, n_components=16)
    removed = set(result.table[result.table.flagged].id)
    assert set(bad_ids) <= removed
    assert len(removed - set(bad_ids)) <= 0.01 * len(sample_dataset)
    assert len(result.kept) == len(ds) - len(removed)
    assert not set(bad_ids) & set(result.kept.ids)
    assert result.table.loc[result.table.flagged, "reason"].isin(["reconstruction_z>12", "distance_z>12", "texture_z>12"]).all()


def test_max_fraction_caps_removal_to_the_most_extreme(sample_dataset):
    ds, bad_ids = _inject(sample_dataset)
    result = filter_outliers(ds, n_components=16, z_threshold=0.0, max_fraction=0.01)
    flagged = result.table[result.table.flagged]
    assert len(flagged) == int(0.01 * len(ds))
    assert flagged.score.min() >= result.table[~result.table.flagged].score.max()
