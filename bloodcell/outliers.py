"""PCA outlier filter: flag samples whose PCA reconstruction error is extreme.

The images are reduced (area-averaged to ``thumb`` x ``thumb``, 0..1) and PCA is fit on the dataset
itself. Each sample gets two robust z-scores (``(v - median) / (1.4826 * MAD)``): of its
reconstruction error (how much of it the principal components cannot explain) and of its
distance inside the PCA space (Mahalanobis distance over the components: how unusual the part they
do explain is). PCA of thumbnails is blind to pixel-level texture, so a third score is the robust z
of the log mean absolute difference between neighbouring pixels at full resolution, taken both
ways (flat or blurred pictures score low, noise scores high). The score is the largest of the
three (texture by absolute value). Samples above ``z_threshold`` are flagged, at
most ``max_fraction`` of the dataset (the most extreme first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from bloodcell.dataset import Dataset


@dataclass
class OutlierResult:
    kept: Dataset
    table: pd.DataFrame  # one row per input sample: id, label, score, flagged, reason


def thumbnails(images: np.ndarray, thumb: int) -> np.ndarray:
    """Area-average (N, H, W, 3) uint8 down to (N, thumb*thumb*3) float32 in 0..1."""
    n, h, w, c = images.shape
    if h % thumb or w % thumb:
        raise ValueError(f"thumb size {thumb} must divide the image size {h}x{w}")
    fh, fw = h // thumb, w // thumb
    out = np.empty((n, thumb, thumb, c), dtype=np.float32)
    for start in range(0, n, 2048):  # chunks keep memory small on big datasets
        chunk = images[start:start + 2048].astype(np.float32) / 255.0
        out[start:start + 2048] = chunk.reshape(len(chunk), thumb, fh, thumb, fw, c).mean(axis=(2, 4))
    return out.reshape(n, -1)


def robust_z(values: np.ndarray) -> np.ndarray:
    med = np.median(values)
    mad = np.median(np.abs(values - med)) * 1.4826
    return (values - med) / max(mad, 1e-12)


def texture_z(images: np.ndarray) -> np.ndarray:
    """Robust z of log(1 + mean |neighbour difference|) per image, computed in chunks."""
    energy = np.empty(len(images), dtype=np.float64)
    for start in range(0, len(images), 2048):
        chunk = images[start:start + 2048].astype(np.int16)
        dx = np.abs(np.diff(chunk, axis=2)).mean(axis=(1, 2, 3))
        dy = np.abs(np.diff(chunk, axis=1)).mean(axis=(1, 2, 3))
        energy[start:start + 2048] = (dx + dy) / 2
    return robust_z(np.log1p(energy))


def pca_scores(images: np.ndarray, n_components: int = 32, thumb: int = 24, seed: int = 0) -> pd.DataFrame:
    """Per sample: robust z of the PCA reconstruction error, of the distance in PCA space, and of texture."""
    x = thumbnails(images, thumb)
    k = int(min(n_components, len(x) - 1, x.shape[1]))
    if k < 1:
        zeros = np.zeros(len(x))
        return pd.DataFrame({"reconstruction_z": zeros, "distance_z": zeros, "texture_z": texture_z(images)})
    pca = PCA(n_components=k, random_state=seed, svd_solver="randomized")
    codes = pca.fit_transform(x)
    err = np.sqrt(((x - pca.inverse_transform(codes)) ** 2).mean(axis=1))
    dist = np.sqrt(((codes / np.sqrt(pca.explained_variance_ + 1e-12)) ** 2).sum(axis=1))
    return pd.DataFrame({"reconstruction_z": robust_z(err), "distance_z": robust_z(dist), "texture_z": texture_z(images)})


def filter_outliers(
    ds: Dataset,
    n_components: int = 32,
    thumb: int = 24,
    z_threshold: float = 12.0,
    max_fraction: float = 0.05,
    seed: int = 0,
) -> OutlierResult:
    """Remove the samples whose PCA reconstruction error is extreme."""
    parts = pca_scores(ds.images, n_components=n_components, thumb=thumb, seed=seed)
    magnitude = parts.assign(texture_z=parts.texture_z.abs())
    scores = magnitude.max(axis=1).to_numpy()
    worst = magnitude.idxmax(axis=1).str.replace("_z", "").to_numpy()
    flagged = scores > z_threshold
    cap = int(np.floor(max_fraction * len(ds)))
    if flagged.sum() > cap:  # keep only the most extreme ``cap`` flags
        order = np.argsort(-scores)
        flagged = np.zeros(len(ds), dtype=bool)
        flagged[order[:cap]] = True
    table = pd.DataFrame(
        {
            "id": ds.ids,
            "label": [ds.class_names[i] for i in ds.labels],
            "score": scores.astype(float),
            "reconstruction_z": parts.reconstruction_z.to_numpy(),
            "distance_z": parts.distance_z.to_numpy(),
            "texture_z": parts.texture_z.to_numpy(),
            "flagged": flagged,
            "reason": [f"{w}_z>{z_threshold:g}" if f else "" for w, f in zip(worst, flagged)],
        }
    )
    kept_idx = np.flatnonzero(~flagged)
    kept = ds.subset(kept_idx, outliers_removed=int(flagged.sum()))
    return OutlierResult(kept=kept, table=table)
