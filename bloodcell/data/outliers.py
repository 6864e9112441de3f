"""Outlier filter: PCA scores plus the visual checks PCA misses.

Every sample gets robust z-scores, ``(v - median) / (1.4826 * MAD)`` over the dataset itself:

- ``reconstruction_z``: PCA reconstruction error of its thumbnail (``thumb`` x ``thumb``, area
  averaged; PCA fit on the dataset): how much of it the principal components cannot explain;
- ``distance_z``: Mahalanobis distance inside the PCA space: how unusual the part they explain is;
- ``texture_z``: log mean absolute difference of neighbouring pixels at full resolution, both ways
  (flat or blurred pictures score low, noise high) - thumbnails are blind to it;
- ``colour_z``: the largest |z| over colour statistics of stained blood smears (per-channel means,
  and red-minus-green and blue-minus-green, the pink/violet cast of May-Gruenwald-Giemsa stain).

The score is the largest of these (texture and colour by absolute value); above ``z_threshold`` a
sample is flagged. Unrelated pictures often come as many copies, so ``duplicate_group``
counts the samples that share a perceptual hash (a 16x16 difference hash, robust to re-encoding);
a group of ``duplicate_group_size`` or more is flagged too. At most ``max_fraction`` of the
dataset is flagged automatically (the most extreme first). A reviewed list overrides all of it:
``always_keep`` ids are never removed, ``always_drop`` ids always are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import Field
from sklearn.decomposition import PCA

from bloodcell.data.dataset import Dataset
from bloodcell.data.features import ImageFeatures
from bloodcell.data.stain import channel_means
from bloodcell.options import Options

SCORES = ("reconstruction_z", "distance_z", "texture_z", "colour_z")


class OutlierConfig(Options):
    """The ``filter_outliers`` step's parameters (its defaults are these)."""

    WHERE = "steps.filter_outliers.parameters"

    n_components: int = 32
    thumb: int = 24
    z_threshold: float = 12.0
    borderline_z: float = 8.0  # kept samples above this are shown for review
    duplicate_group_size: int = 5
    max_fraction: float = 0.05
    always_keep: list[str] = Field(default_factory=list)
    always_drop: list[str] = Field(default_factory=list)
    seed: int = 0

    @classmethod
    def from_pipeline_config(cls, path: str | None) -> OutlierConfig:
        """The ``filter_outliers`` parameters of a training pipeline config (defaults for the
        rest)."""
        if not path:
            return cls()
        cfg = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict(
            cfg.get("steps", {}).get("filter_outliers", {}).get("parameters", {}) or {}
        )


@dataclass
class OutlierReport:
    """Every sample's scores and reason, and the images a person should look at."""

    table: pd.DataFrame  # one row per input sample: id, label, scores, flagged, borderline, reason
    removed_images: np.ndarray  # up to ``max_images`` removed samples, most extreme first
    borderline_images: np.ndarray  # up to ``max_images`` kept samples above ``borderline_z``

    @property
    def removed(self) -> pd.DataFrame:
        return self.table[self.table.flagged]


@dataclass
class OutlierResult:
    kept: Dataset
    report: OutlierReport

    @property
    def table(self) -> pd.DataFrame:
        return self.report.table


def _area_means(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(N, H, W, ...) float down to (N, rows, cols, ...) by averaging over as-equal-as-possible
    cells."""
    h, w = images.shape[1:3]
    ys = np.linspace(0, h, rows + 1).astype(int)
    xs = np.linspace(0, w, cols + 1).astype(int)
    y_sizes, x_sizes = np.diff(ys).reshape(1, -1, 1), np.diff(xs).reshape(1, 1, -1)
    if images.ndim == 4:
        y_sizes, x_sizes = y_sizes[..., None], x_sizes[..., None]
    # summed in float32 straight from the input's dtype: no float copy of the whole images
    summed = np.add.reduceat(
        np.add.reduceat(images, ys[:-1], axis=1, dtype=np.float32), xs[:-1], axis=2
    )
    return summed / (y_sizes * x_sizes)


def thumbnails(images: np.ndarray, thumb: int) -> np.ndarray:
    """Area-average (N, H, W, 3) uint8 down to (N, thumb*thumb*3) float32 in 0..1 (any image size
    from ``thumb`` up)."""
    n, h, w, c = images.shape
    if thumb > min(h, w):
        raise ValueError(f"thumb size {thumb} is larger than the images ({h}x{w})")
    out = np.empty((n, thumb, thumb, c), dtype=np.float32)
    for start in range(0, n, 256):  # chunks keep memory small on big datasets
        out[start : start + 256] = (
            _area_means(np.asarray(images[start : start + 256]), thumb, thumb) / 255.0
        )
    return out.reshape(n, -1)


def robust_z(values: np.ndarray) -> np.ndarray:
    med = np.median(values)
    mad = np.median(np.abs(values - med)) * 1.4826
    return (values - med) / max(mad, 1e-12)


def texture_energy(images: np.ndarray, block: int = 256) -> np.ndarray:
    """Mean |neighbour difference| per image, both ways, ``block`` images at a time."""
    energy = np.empty(len(images), dtype=np.float64)
    for start in range(0, len(images), block):
        chunk = np.asarray(images[start : start + block]).astype(np.int16)
        n = len(chunk)
        dx = (
            np.abs(np.diff(chunk, axis=2)).reshape(n, -1).sum(axis=1, dtype=np.int64)
            / chunk[0, :, 1:].size
        )
        dy = (
            np.abs(np.diff(chunk, axis=1)).reshape(n, -1).sum(axis=1, dtype=np.int64)
            / chunk[0, 1:].size
        )
        energy[start : start + n] = (dx + dy) / 2
    return energy


def texture_z(images: np.ndarray, block: int = 256) -> np.ndarray:
    """Robust z of log(1 + mean |neighbour difference|) per image."""
    return robust_z(np.log1p(texture_energy(images, block)))


def colour_z(images: np.ndarray) -> np.ndarray:
    """Largest |robust z| over per-channel means and the R-G and B-G casts of each image."""
    return colour_z_of(channel_means(images))


def colour_z_of(means: np.ndarray) -> np.ndarray:
    """``colour_z`` from the images' (N, 3) channel means."""
    feats = np.column_stack([means, means[:, 0] - means[:, 1], means[:, 2] - means[:, 1]])
    return np.abs(np.column_stack([robust_z(f) for f in feats.T])).max(axis=1)


def perceptual_hashes(images: np.ndarray, size: int = 16) -> np.ndarray:
    """A ``size`` x ``size`` difference hash of each image's luminance, one packed-bits row each."""
    n = len(images)
    out = np.empty((n, size * size // 8), dtype=np.uint8)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    for start in range(0, n, 256):
        # area-average to size x (size + 1) cells, to luminance (both linear: cells first is
        # cheaper), then compare horizontal neighbours
        cells = _area_means(np.asarray(images[start : start + 256]), size, size + 1) @ weights
        bits = cells[:, :, 1:] > cells[:, :, :-1]
        out[start : start + 256] = np.packbits(bits.reshape(len(cells), -1), axis=1)
    return out


def duplicate_groups(images: np.ndarray) -> np.ndarray:
    """For each sample, how many samples (itself included) share its perceptual hash."""
    return duplicate_groups_of(perceptual_hashes(images))


def duplicate_groups_of(hashes: np.ndarray) -> np.ndarray:
    """``duplicate_groups`` from the images' perceptual hashes."""
    _, inverse, counts = np.unique(hashes, axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)]


PCA_FIT_SAMPLES = (
    20000  # the PCA is fit on at most this many images (all of pbc96's 15k), then scores all
)


def fit_rows(n: int, fit_samples: int, seed: int) -> np.ndarray:
    """The rows the PCA is fit on: ``fit_samples`` drawn with ``seed``, in order (all, when there
    are no more)."""
    if n > fit_samples:
        return np.sort(np.random.default_rng(seed).permutation(n)[:fit_samples])
    return np.arange(n)


def pca_scores(
    images: np.ndarray,
    n_components: int = 32,
    thumb: int = 24,
    seed: int = 0,
    fit_samples: int = PCA_FIT_SAMPLES,
) -> pd.DataFrame:
    """Per sample: robust z of the PCA reconstruction error and of the distance in PCA space. The
    PCA is fit on the thumbnails of ``fit_samples`` images drawn with ``seed`` (all, when there are
    no more), then every image is scored 2,048 at a time: memory does not grow with the dataset."""
    n = len(images)
    rows = fit_rows(n, fit_samples, seed)
    x = np.concatenate(
        [thumbnails(images[rows[a : a + 2048]], thumb) for a in range(0, len(rows), 2048)]
        or [np.zeros((0, thumb * thumb * 3), np.float32)]
    )
    if n <= fit_samples:  # the fit thumbnails are all of them
        return scores_from_thumbnails(n, x, [(np.arange(n), x)], n_components, seed)
    blocks = (
        (np.arange(a, min(a + 2048, n)), thumbnails(images[a : a + 2048], thumb))
        for a in range(0, n, 2048)
    )
    return scores_from_thumbnails(n, x, blocks, n_components, seed)


def scores_from_thumbnails(
    n: int,
    fit: np.ndarray,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    n_components: int,
    seed: int,
) -> pd.DataFrame:
    """``pca_scores`` from thumbnails: the PCA fit on ``fit``, then each of ``blocks`` (rows, their
    thumbnails; every row of ``n`` once) scored 2,048 rows at a time."""
    k = int(min(n_components, len(fit) - 1, fit.shape[1]))
    if k < 1:
        zeros = np.zeros(n)
        return pd.DataFrame({"reconstruction_z": zeros, "distance_z": zeros})
    pca = PCA(n_components=k, random_state=seed, svd_solver="randomized").fit(fit)
    err, dist = np.empty(n), np.empty(n)
    for rows, x in blocks:
        for a in range(0, len(rows), 2048):
            chunk, where = x[a : a + 2048], rows[a : a + 2048]
            codes = pca.transform(chunk)
            err[where] = np.sqrt(((chunk - pca.inverse_transform(codes)) ** 2).mean(axis=1))
            dist[where] = np.sqrt(
                ((codes / np.sqrt(pca.explained_variance_ + 1e-12)) ** 2).sum(axis=1)
            )
        x = chunk = None  # a block read from storage goes before the next one is read
    return pd.DataFrame({"reconstruction_z": robust_z(err), "distance_z": robust_z(dist)})


def score_samples(ds: Dataset, cfg: OutlierConfig) -> pd.DataFrame:
    """Every sample's scores, whether it is flagged, and why."""
    table = pca_scores(ds.images, cfg.n_components, cfg.thumb, cfg.seed, PCA_FIT_SAMPLES)
    table["texture_z"] = texture_z(ds.images)
    table["colour_z"] = colour_z(ds.images)
    return flag_samples(ds, table, duplicate_groups(ds.images), cfg)


def score_features(ds: Dataset, parts: Sequence[ImageFeatures], cfg: OutlierConfig) -> pd.DataFrame:
    """``score_samples`` from per-image features computed elsewhere (each chunk's, in any order):
    the same table for the same images, as the features are the same numbers. Their ids must be
    the dataset's; the thumbnails are scored a part at a time, never all in memory."""
    where = {sid: r for r, sid in enumerate(i for p in parts for i in p.ids)}
    if len(where) != len(ds) or any(sid not in where for sid in ds.ids):
        raise ValueError(
            f"the features are of {len(where)} images, not of the dataset's {len(ds)} (rule: one "
            "row of features for each sample)"
        )
    thumbs = {p.thumb for p in parts}
    if thumbs != {cfg.thumb}:
        raise ValueError(
            f"features computed at thumb {sorted(thumbs)}, filter_outliers.thumb is {cfg.thumb} "
            "(rule: the chunks are scored at the filter's thumbnail size)"
        )
    n = len(ds)
    order = np.array([where[sid] for sid in ds.ids], dtype=np.int64)  # dataset row -> part rows
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)  # rows of the parts, one after the other -> dataset row
    starts = np.cumsum([0] + [len(p) for p in parts])
    rows = order[fit_rows(n, PCA_FIT_SAMPLES, cfg.seed)]
    fit = np.empty((len(rows), cfg.thumb * cfg.thumb * 3), np.float32)
    for k, p in enumerate(parts):  # a part's thumbnails are read when used (StoredArray)
        mine = (rows >= starts[k]) & (rows < starts[k + 1])
        if mine.any():
            fit[mine] = np.asarray(p.thumbs)[rows[mine] - starts[k]]
    if n <= PCA_FIT_SAMPLES:  # the fit thumbnails are all of them, in the dataset's order
        blocks: Iterable = [(np.arange(n), fit)]
    else:
        blocks = (
            (position[starts[k] : starts[k + 1]], np.asarray(p.thumbs)) for k, p in enumerate(parts)
        )
    table = scores_from_thumbnails(n, fit, blocks, cfg.n_components, cfg.seed)
    table["texture_z"] = robust_z(np.log1p(np.concatenate([p.texture for p in parts])[order]))
    table["colour_z"] = colour_z_of(np.concatenate([p.means for p in parts])[order])
    groups = duplicate_groups_of(np.concatenate([p.phash for p in parts])[order])
    return flag_samples(ds, table, groups, cfg)


def flag_samples(
    ds: Dataset, table: pd.DataFrame, groups: np.ndarray, cfg: OutlierConfig
) -> pd.DataFrame:
    """The table of ``score_samples`` from the samples' z-scores (``SCORES``) and duplicate
    groups: what is flagged and why."""
    table.insert(0, "id", ds.ids)
    table.insert(1, "label", [ds.class_names[i] for i in ds.labels])
    magnitude = table[list(SCORES)].abs()
    table["score"] = magnitude.max(axis=1)
    table["duplicate_group"] = groups
    worst = magnitude.idxmax(axis=1)

    by_score = table.score > cfg.z_threshold
    by_dup = table.duplicate_group >= cfg.duplicate_group_size
    auto = (by_score | by_dup).to_numpy(copy=True)
    cap = int(np.floor(cfg.max_fraction * len(ds)))
    if auto.sum() > cap:  # keep only the ``cap`` most extreme automatic flags (duplicates first)
        rank = np.lexsort((-table.score.to_numpy(), ~by_dup.to_numpy()))
        capped = np.zeros(len(ds), dtype=bool)
        capped[rank[:cap]] = True
        auto &= capped
    reasons = []
    for is_auto, s, w, d in zip(auto, by_score, worst, by_dup):
        parts = []
        if is_auto and s:
            parts.append(f"{w}>{cfg.z_threshold:g}")
        if is_auto and d:
            parts.append(f"duplicate_group>={cfg.duplicate_group_size}")
        reasons.append(" ".join(parts))
    table["reason"] = reasons
    keep, drop = set(cfg.always_keep), set(cfg.always_drop)
    unknown = (keep | drop) - set(ds.ids)
    if unknown:
        raise ValueError(
            f"reviewed list names ids that are not in the dataset: {sorted(unknown)[:5]}"
        )
    table.loc[table.id.isin(keep), "reason"] = ""
    table.loc[table.id.isin(drop), "reason"] = "reviewed: always_drop"
    table["flagged"] = table.reason != ""
    table["borderline"] = ~table.flagged & (table.score > cfg.borderline_z)
    return table


def filter_outliers(
    ds: Dataset,
    cfg: OutlierConfig | None = None,
    max_images: int = 96,
    features: Sequence[ImageFeatures] | None = None,
    **overrides,
) -> OutlierResult:
    """Remove the flagged samples; the report keeps every sample's scores and reason.
    ``features``: the samples' per-image features, computed already (``score_features``)."""
    cfg = cfg or OutlierConfig(**overrides)
    table = score_samples(ds, cfg) if features is None else score_features(ds, features, cfg)
    flagged = table.flagged.to_numpy()
    kept = ds.subset(np.flatnonzero(~flagged), outliers_removed=int(flagged.sum()))

    def most_extreme(mask: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(mask)
        return ds.images[idx[np.argsort(-table.score.to_numpy()[idx])][:max_images]]

    report = OutlierReport(
        table=table,
        removed_images=most_extreme(flagged),
        borderline_images=most_extreme(table.borderline.to_numpy()),
    )
    return OutlierResult(kept=kept, report=report)
