"""Pandas tables that describe what a step consumed and produced, for the expectation suites.

Each function returns ``{table name: DataFrame}``; the suite file (``configs/expectations.yaml``)
names these tables and columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bloodcell.data.dataset import Dataset
from bloodcell.data.stain import channel_stats


def sample_table(ds: Dataset, stats: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """id, label, shape, dtype, per-channel mean/std and content hash of every sample.
    ``stats``: the (N, 3) channel means and stds, where they were computed already (no pixels
    are read then)."""
    n = len(ds)
    if stats is not None:
        means, stds = stats
    else:
        means, stds = np.empty((n, 3)), np.empty((n, 3))
        for start in range(0, n, 2048):
            means[start : start + 2048], stds[start : start + 2048] = channel_stats(
                ds.images[start : start + 2048]
            )
    h, w, c = ds.images.shape[1:]
    return pd.DataFrame(
        {
            "id": ds.ids,
            "label": ds.labels.astype(np.int64),
            "height": np.full(n, h),
            "width": np.full(n, w),
            "channels": np.full(n, c),
            "dtype": [str(ds.images.dtype)] * n,
            "mean_r": means[:, 0],
            "mean_g": means[:, 1],
            "mean_b": means[:, 2],
            "std_r": stds[:, 0],
            "std_g": stds[:, 1],
            "std_b": stds[:, 2],
            "std": stds.mean(axis=1),
            "content_hash": ds.image_hashes(),
        }
    )


def _counts(ds: Dataset) -> np.ndarray:
    """Samples per class; labels outside the class range are left for the label check to report."""
    n = len(ds.class_names)
    valid = ds.labels[(ds.labels >= 0) & (ds.labels < n)]
    return np.bincount(valid, minlength=n)


def class_table(ds: Dataset) -> pd.DataFrame:
    counts = _counts(ds)
    return pd.DataFrame(
        {
            "class": ds.class_names,
            "count": counts,
            "fraction": counts / max(len(ds), 1),
            "ratio_to_largest": counts / max(counts.max(), 1),
        }
    )


def shape_params(ds: Dataset) -> dict[str, int]:
    """The suite parameters that follow the data: image size, class count, largest label (0 for
    an empty dataset without classes: no external sets)."""
    return {
        "image_size": int(ds.images.shape[1]),
        "num_classes": len(ds.class_names),
        "max_label": max(len(ds.class_names) - 1, 0),
    }


def ingest_tables(
    ds: Dataset, stats: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, pd.DataFrame]:
    return {"samples": sample_table(ds, stats), "classes": class_table(ds)}


def unlabeled_tables(ds: Dataset) -> dict[str, pd.DataFrame]:
    """Images to predict on: the per-sample table (its label column is -1 throughout)."""
    return {"samples": sample_table(ds)}


def external_tables(ds: Dataset) -> dict[str, pd.DataFrame]:
    """Other labs' labelled images: the per-sample table."""
    return {"samples": sample_table(ds)}


def filter_tables(before: Dataset, after: Dataset) -> dict[str, pd.DataFrame]:
    b, a = _counts(before), _counts(after)
    removed = len(before) - len(after)
    return {
        "summary": pd.DataFrame(
            {
                "samples": [len(before)],
                "removed": [removed],
                "removed_fraction": [removed / max(len(before), 1)],
            }
        ),
        "classes": pd.DataFrame(
            {
                "class": before.class_names,
                "before": b,
                "removed": b - a,
                "removed_fraction": (b - a) / np.maximum(b, 1),
            }
        ),
    }


def split_tables(
    whole: Dataset, parts: dict[str, Dataset], expected: dict[str, float]
) -> dict[str, pd.DataFrame]:
    """``parts`` maps split name to dataset, ``expected`` split name to its intended fraction."""
    whole_frac = _counts(whole) / max(len(whole), 1)
    rows, sizes, samples = [], [], []
    for name, part in parts.items():
        frac = _counts(part) / max(len(part), 1)
        # a stratified split is off by rounding only: under two samples a class, however small the
        # split
        rows += [
            {
                "split": name,
                "class": c,
                "fraction": f,
                "difference_pp": 100 * (f - w),
                "difference_samples": (f - w) * len(part),
            }
            for c, f, w in zip(whole.class_names, frac, whole_frac)
        ]
        fraction = len(part) / max(len(whole), 1)
        sizes.append(
            {
                "split": name,
                "samples": len(part),
                "fraction": fraction,
                "expected_fraction": expected[name],
                "difference_pp": 100 * (fraction - expected[name]),
            }
        )
        samples.append(
            pd.DataFrame({"id": part.ids, "split": name, "content_hash": part.image_hashes()})
        )
    sample_df = pd.concat(samples, ignore_index=True)
    sample_df["splits_with_this_image"] = sample_df.groupby("content_hash")["split"].transform(
        "nunique"
    )
    return {
        "class_proportions": pd.DataFrame(rows),
        "sizes": pd.DataFrame(sizes),
        "samples": sample_df,
    }


def rebalance_tables(
    train: Dataset, balanced: Dataset, held_out_ids: set[str]
) -> dict[str, pd.DataFrame]:
    present = set(balanced.ids)
    sources = [i.partition("#aug")[0] for i in balanced.ids]
    return {
        "classes": class_table(balanced),
        "originals": pd.DataFrame({"id": train.ids, "present": [i in present for i in train.ids]}),
        "samples": pd.DataFrame(
            {
                "id": balanced.ids,
                "source_id": sources,
                "source_in_val_or_test": [s in held_out_ids for s in sources],
            }
        ),
    }


def history_tables(history: dict[str, list[float]]) -> dict[str, pd.DataFrame]:
    epochs = pd.DataFrame(history)
    epochs.insert(0, "epoch", np.arange(1, len(epochs) + 1))
    val = history.get("val_accuracy") or [float("nan")]
    return {
        "epochs": epochs,
        "summary": pd.DataFrame({"best_val_accuracy": [max(val)], "final_val_accuracy": [val[-1]]}),
    }


def metrics_tables(summary: dict[str, float]) -> dict[str, pd.DataFrame]:
    return {"metrics": pd.DataFrame([summary])}
