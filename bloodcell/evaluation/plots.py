"""PNG renderings for the ZenML dashboard (matplotlib with the non-interactive Agg backend)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def class_count_bars(counts: dict[str, int], title: str = "samples per class") -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names, values = list(counts), list(counts.values())
    bars = ax.bar(names, values, color="#7a4fa3")
    ax.bar_label(bars, fontsize=8)
    ax.set_title(title)
    ax.set_ylabel("images")
    ax.tick_params(axis="x", rotation=30)
    return _png(fig)


def sample_grid(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    per_class: int = 8,
    seed: int = 0,
) -> bytes:
    """One row per class: up to ``per_class`` images, the class name drawn at the left."""
    rng = np.random.default_rng(seed)
    h, w = images.shape[1:3]
    label_w = 110
    canvas = np.full((len(class_names) * h, label_w + per_class * w, 3), 255, dtype=np.uint8)
    for c in range(len(class_names)):
        members = np.flatnonzero(labels == c)
        pick = (
            rng.choice(members, size=min(per_class, len(members)), replace=False)
            if len(members)
            else []
        )
        for j, i in enumerate(pick):
            canvas[c * h : (c + 1) * h, label_w + j * w : label_w + (j + 1) * w] = images[i]
    fig, ax = plt.subplots(figsize=(canvas.shape[1] / 100, canvas.shape[0] / 100), dpi=100)
    ax.imshow(canvas)
    for c, name in enumerate(class_names):
        ax.text(4, c * h + h / 2, name, va="center", fontsize=9)
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    return _png(fig)


def confusion_matrix_png(
    confusion: list[list[int]], class_names: list[str], title: str, rows: list[str] | None = None
) -> bytes:
    """True classes down, predicted across; ``rows``: only these true classes (a set that lacks
    some of the model's classes)."""
    keep = (
        [class_names.index(r) for r in rows] if rows is not None else list(range(len(class_names)))
    )
    cm = np.asarray(confusion)[keep]
    fig, ax = plt.subplots(figsize=(6.4, 1.6 + 0.5 * len(keep)))
    ax.imshow(cm, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(keep)), [class_names[i] for i in keep])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    vmax = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if cm[i, j] > vmax / 2 else "black",
            )
    return _png(fig)


def training_curves(history: dict[str, list[float]]) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for k in (key, f"val_{key}"):
            if k in history:
                ax.plot(range(1, len(history[k]) + 1), history[k], label=k)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    return _png(fig)


def image_strip(
    images: np.ndarray, captions: list[str], max_images: int = 48, cols: int = 12
) -> bytes:
    """A contact sheet of images with a caption under each."""
    images = images[:max_images]
    if len(images) == 0:
        return _png(plt.figure(figsize=(2, 0.5)))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, cap in zip(axes.ravel(), images, captions):
        ax.imshow(Image.fromarray(img))
        ax.set_title(cap, fontsize=6)
    return _png(fig)


def corruption_curves(rows: list[dict], title: str = "accuracy under corruption") -> bytes:
    """Accuracy against severity, one line per corruption (severity 0 = clean images)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name in dict.fromkeys(r["corruption"] for r in rows):
        pts = sorted((r["severity"], r["accuracy"]) for r in rows if r["corruption"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy")
    ax.set_xticks(sorted({r["severity"] for r in rows}))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    return _png(fig)


def reliability_diagrams(trust: dict[str, dict]) -> bytes:
    """One reliability diagram per set: accuracy against confidence per bin, before and after
    calibration, with the expected calibration error of each."""
    fig, axes = plt.subplots(1, len(trust), figsize=(3.2 * len(trust), 3.4), squeeze=False)
    for ax, (name, t) in zip(axes[0], trust.items()):
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
        for key, colour, label in (
            ("reliability_before", "#d08c2d", "before"),
            ("reliability_after", "#2d6cc0", "after"),
        ):
            r = t[key]
            ax.plot(
                r["confidence"],
                r["accuracy"],
                marker="o",
                ms=3,
                color=colour,
                label=f"{label}: ECE {r['ece']:.3f}",
            )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("accuracy")
    return _png(fig)


def risk_coverage_curves(trust: dict[str, dict]) -> bytes:
    """Accuracy among the accepted cells against coverage (the most confident accepted first), one
    line per set; a dot at the referral rule's own coverage."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, t in trust.items():
        (line,) = ax.plot(
            t["curve_coverage"], t["curve_accuracy"], label=f"{name} (AURC {t['aurc']:.3f})"
        )
        if t["coverage"] > 0:
            ax.plot([t["coverage"]], [t["accuracy_accepted"]], "o", color=line.get_color())
    ax.axhline(0.995, color="#999", lw=1, ls="--")
    ax.set_xlabel("coverage (share of cells accepted)")
    ax.set_ylabel("accuracy among accepted")
    ax.set_title("risk-coverage (dots: the shipped rule)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def feature_summary(texture: np.ndarray, means: np.ndarray, title: str) -> bytes:
    """A chunk's per-image features at a glance: the texture energy's spread and each image's
    stain cast (red minus green against blue minus green), where outliers stand apart."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    left.hist(np.log1p(texture), bins=40, color="#7a4fa3")
    left.set_xlabel("log(1 + texture energy)")
    left.set_ylabel("images")
    right.scatter(means[:, 0] - means[:, 1], means[:, 2] - means[:, 1], s=3, alpha=0.4)
    right.set_xlabel("red - green")
    right.set_ylabel("blue - green")
    fig.suptitle(title)
    return _png(fig)
