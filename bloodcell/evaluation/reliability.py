"""How far a model's answers can be trusted, measured: the expected calibration error and the
reliability diagram (scikit-learn's ``calibration_curve`` on the top-class confidence), the
risk-coverage curve of answering only the most confident cells, and bootstrap intervals for the
small external sets."""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15


def reliability(
    confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> dict[str, Any]:
    """The expected calibration error (Guo et al. 2017: |accuracy - confidence| per equal-width
    confidence bin, weighted by the bin's share) and the diagram's points (one per non-empty
    bin)."""
    from sklearn.calibration import calibration_curve

    confidence = np.clip(np.asarray(confidence, np.float64), 0.0, 1.0)
    correct = np.asarray(correct, bool)
    if not len(confidence):
        return {"ece": float("nan"), "accuracy": [], "confidence": [], "count": []}
    edges = np.linspace(0.0, 1.0, bins + 1)
    counts = np.histogram(confidence, edges)[0]
    if correct.all() or not correct.any():  # calibration_curve needs both outcomes
        which = np.clip(np.searchsorted(edges[1:-1], confidence, side="right"), 0, bins - 1)
        acc = np.array([correct[which == b].mean() for b in range(bins) if counts[b]])
        conf = np.array([confidence[which == b].mean() for b in range(bins) if counts[b]])
    else:
        acc, conf = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
    weights = counts[counts > 0] / len(confidence)
    return {
        "ece": float(np.sum(weights * np.abs(acc - conf))),
        "accuracy": acc.round(4).tolist(),
        "confidence": conf.round(4).tolist(),
        "count": counts[counts > 0].tolist(),
    }


def risk_coverage(confidence: np.ndarray, correct: np.ndarray, points: int = 50) -> dict[str, Any]:
    """Accuracy among the accepted cells when only the most confident are accepted, at each
    coverage: the curve (``points`` coverages), its area under the risk (error) curve (AURC), and
    the coverage at which accuracy among the accepted is still 99% and 99.5%."""
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, bool)
    n = len(confidence)
    if not n:
        return {
            "curve_coverage": [],
            "curve_accuracy": [],
            "aurc": float("nan"),
            "coverage_at_99": 0.0,
            "coverage_at_99_5": 0.0,
        }
    order = np.argsort(-confidence, kind="stable")
    acc = np.cumsum(correct[order]) / np.arange(1, n + 1)
    cover = np.arange(1, n + 1) / n
    pick = np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(int))

    def at(target: float) -> float:
        ok = np.flatnonzero(acc >= target)
        return float(cover[ok[-1]]) if len(ok) else 0.0

    return {
        "curve_coverage": cover[pick].round(4).tolist(),
        "curve_accuracy": acc[pick].round(4).tolist(),
        "aurc": float(np.mean(1.0 - acc)),
        "coverage_at_99": at(0.99),
        "coverage_at_99_5": at(0.995),
    }


def bootstrap_balanced_accuracy(
    y_true: np.ndarray, y_pred: np.ndarray, rounds: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """A percentile bootstrap interval of the balanced accuracy (mean recall over the classes
    present in each resample), resampling within each class so every class stays present."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    hits = [(y_pred[g] == y_true[g]).astype(np.float64) for g in groups]
    draws = np.stack(
        [hit[rng.integers(0, len(hit), (rounds, len(hit)))].mean(axis=1) for hit in hits]
    )
    values = draws.mean(axis=0)
    tail = (1.0 - level) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def referral_summary(status: list[str], correct: np.ndarray | None = None) -> dict[str, Any]:
    """Shares of each status and, with labels, the accuracy among the accepted cells."""
    status_arr = np.asarray(status)
    n = max(len(status_arr), 1)
    out: dict[str, Any] = {
        "n": len(status_arr),
        "coverage": float(np.sum(status_arr == "accept") / n),
        "review": float(np.sum(status_arr == "review") / n),
        "not_a_cell": float(np.sum(status_arr == "not_a_cell") / n),
    }
    out["not_accepted"] = 1.0 - out["coverage"]
    if correct is not None:
        accepted = status_arr == "accept"
        out["accuracy_accepted"] = (
            float(np.asarray(correct)[accepted].mean()) if accepted.any() else float("nan")
        )
    return out
