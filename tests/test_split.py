from __future__ import annotations

import numpy as np
import pytest

from bloodcell.data.split import stratified_split


def test_stratified_disjoint_and_seeded(sample_dataset):
    tr, va, te = stratified_split(sample_dataset, 0.1, 0.1, seed=42)
    assert (len(tr), len(va), len(te)) == (320, 40, 40)
    assert not (set(tr.ids) & set(va.ids) or set(tr.ids) & set(te.ids) or set(va.ids) & set(te.ids))
    for part, n in ((tr, 40), (va, 5), (te, 5)):
        assert all(v == n for v in part.class_counts().values())
    again = stratified_split(sample_dataset, 0.1, 0.1, seed=42)
    assert again[2].ids == te.ids
    other = stratified_split(sample_dataset, 0.1, 0.1, seed=7)
    assert other[2].ids != te.ids
    i = tr.ids.index(tr.ids[3])
    j = sample_dataset.ids.index(tr.ids[3])
    assert (
        np.array_equal(tr.images[i], sample_dataset.images[j])
        and tr.labels[i] == sample_dataset.labels[j]
    )


def test_duplicate_ids_are_refused(sample_dataset):
    ds = sample_dataset.subset(list(range(400)) + [0])
    with pytest.raises(ValueError, match="occurs more than once"):
        stratified_split(ds)


def test_identical_images_stay_in_one_split(sample_dataset):
    # ten pairs of identical images under different names, as in the real data
    dup_src = np.arange(0, 400, 40)
    images = np.concatenate([sample_dataset.images, sample_dataset.images[dup_src]])
    ds = sample_dataset.subset(np.arange(400))
    ds = type(ds)(
        images=images,
        labels=np.concatenate([ds.labels, ds.labels[dup_src]]),
        ids=ds.ids + [f"copy_of/{sample_dataset.ids[i]}" for i in dup_src],
    )
    for seed in range(5):
        parts = stratified_split(ds, seed=seed)
        for i in dup_src:
            where = [name for name, p in zip("tvs", parts) if sample_dataset.ids[i] in p.ids]
            where_copy = [
                name for name, p in zip("tvs", parts) if f"copy_of/{sample_dataset.ids[i]}" in p.ids
            ]
            assert where == where_copy and len(where) == 1
    assert sum(len(p) for p in parts) == len(ds)
