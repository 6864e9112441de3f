"""The outlier filter removes injected non-cell images and keeps real cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bloodcell.cli import main as cli
from bloodcell.data.dataset import Dataset
from bloodcell.data.outliers import OutlierConfig, duplicate_groups, filter_outliers


def synthetic_outliers(rng: np.random.Generator) -> dict[str, np.ndarray]:
    ramp = np.linspace(0, 255, 96, dtype=np.float32)
    return {
        "flat": np.full((96, 96, 3), 30, np.uint8),
        "noise": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
        "gradient": np.broadcast_to(ramp[:, None, None], (96, 96, 3)).astype(np.uint8),
    }


def natural_photos() -> dict[str, np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    out = {}
    for name in ("astronaut", "coffee", "chelsea", "camera"):
        img = getattr(skimage_data, name)()
        pil = Image.fromarray(img).convert("RGB")
        side = min(pil.size)
        out[name] = np.asarray(
            pil.crop((0, 0, side, side)).resize((96, 96), Image.Resampling.LANCZOS)
        )
    return out


def inject(ds: Dataset, extra: dict[str, np.ndarray], copies: int = 1) -> tuple[Dataset, list[str]]:
    images, ids = [], []
    for name, img in extra.items():
        for k in range(copies):
            images.append(img)
            ids.append(f"injected/{name}/{k}")
    return Dataset(
        images=np.concatenate([ds.images, np.stack(images)]),
        labels=np.concatenate([ds.labels, np.arange(len(images)) % 8]),
        ids=ds.ids + ids,
    ), ids


def removed_ids(result) -> set[str]:
    return set(result.table[result.table.flagged].id)


def test_injected_outliers_are_removed_and_cells_kept(sample_dataset):
    ds, bad = inject(
        sample_dataset, {**synthetic_outliers(np.random.default_rng(0)), **natural_photos()}
    )
    result = filter_outliers(ds, n_components=16)
    assert set(bad) <= removed_ids(result)
    assert len(removed_ids(result) - set(bad)) <= 0.01 * len(sample_dataset)
    assert len(result.kept) == len(ds) - len(removed_ids(result))
    assert not set(bad) & set(result.kept.ids)
    table = result.table.set_index("id")
    assert table.texture_z["injected/noise/0"] > 12
    assert table.colour_z["injected/camera/0"] > 12  # a grey photo has no stain cast
    assert table.reason["injected/camera/0"].endswith("_z>12")
    # the report keeps the removed images for a person to look at, most extreme first
    assert len(result.report.removed_images) == len(removed_ids(result))


def test_copies_of_one_picture_are_caught_as_a_duplicate_group(sample_dataset):
    cell_like = sample_dataset.images[0]  # even a real-looking image is suspicious as 20 copies
    ds, bad = inject(sample_dataset.subset(np.arange(1, 400)), {"copy": cell_like}, copies=20)
    result = filter_outliers(ds, n_components=16)
    assert set(bad) <= removed_ids(result)
    assert (
        result.table.set_index("id").loc[bad, "reason"].str.contains("duplicate_group>=5")
    ).all()
    assert duplicate_groups(sample_dataset.images).max() < 5  # real cells do not share hashes


def test_reviewed_lists_override_the_filter(sample_dataset):
    ds, bad = inject(sample_dataset, synthetic_outliers(np.random.default_rng(1)))
    genuine = sample_dataset.ids[10]
    result = filter_outliers(
        ds, OutlierConfig(n_components=16, always_keep=[bad[0]], always_drop=[genuine])
    )
    assert bad[0] in result.kept.ids and genuine not in result.kept.ids
    assert result.table.set_index("id").reason[genuine] == "reviewed: always_drop"
    with pytest.raises(ValueError, match="reviewed list names ids that are not in the dataset"):
        filter_outliers(ds, OutlierConfig(always_drop=["nope"]))


def test_max_fraction_caps_removal_to_the_most_extreme(sample_dataset):
    ds, _ = inject(sample_dataset, synthetic_outliers(np.random.default_rng(0)))
    result = filter_outliers(ds, n_components=16, z_threshold=0.0, max_fraction=0.01)
    flagged = result.table[result.table.flagged]
    assert len(flagged) == int(0.01 * len(ds))
    assert flagged.score.min() >= result.table[~result.table.flagged].score.max()


def test_cli_writes_one_row_per_sample_with_npz_row_ids(tmp_path, sample_dataset):
    ds, bad = inject(sample_dataset, synthetic_outliers(np.random.default_rng(2)))
    npz = tmp_path / "cells.npz"
    np.savez(npz, images=ds.images, labels=ds.labels)
    out = tmp_path / "flagged.csv"
    assert cli(["outliers", str(npz), "--output", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["id", "score", "flagged", "reason"]
    assert len(table) == len(ds) and table.id.iloc[-1] == f"cells.npz:{len(ds) - 1}"
    assert set(table[table.flagged].id) >= {f"cells.npz:{i}" for i in range(400, len(ds))}


def test_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    assert cli(["outliers", str(tmp_path / "missing"), "--output", str(tmp_path / "x.csv")]) == 2
    assert "missing: no such file or folder" in capsys.readouterr().err


def test_pca_fit_on_a_sample_scores_like_the_fit_on_all(sample_dataset):
    """Large datasets fit the PCA on a bounded sample (bloodcell.data.outliers.PCA_FIT_SAMPLES) and
    score every image chunk by chunk: here 250 of 407 images, against the fit on all of them."""
    from scipy.stats import spearmanr

    from bloodcell.data.outliers import pca_scores

    ds, ids = inject(
        sample_dataset, natural_photos() | synthetic_outliers(np.random.default_rng(0))
    )
    injected = np.isin(ds.ids, ids)
    full = pca_scores(ds.images, n_components=16)
    sampled = pca_scores(ds.images, n_components=16, fit_samples=250)
    for col in full:  # the cells rank alike
        assert spearmanr(full[col][~injected], sampled[col][~injected])[0] > 0.8, col
    # and every injected image stands out from the cells, whether it was in the fit sample or not
    cells_95 = np.percentile(sampled.distance_z[~injected], 95)
    assert (sampled.distance_z[injected] > 2 * cells_95).all(), sampled.distance_z[
        injected
    ].tolist()
