"""Images that are not one blood cell, made here, for checking that a model says so: blank
fields, colour gradients, noise, typed text, stripes, checkerboards, shapes, and tiles of several
cells (a smear field at low magnification). Each kind is drawn from a seeded generator, so the
set is the same on every machine."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = (
    "sample",
    "patient",
    "report",
    "blood",
    "count",
    "slide",
    "result",
    "normal",
    "date",
    "lab",
    "ref",
    "haemoglobin",
    "platelets",
    "ward",
    "name",
    "range",
    "units",
    "signed",
    "total",
    "check",
)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float64)


def blank(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.broadcast_to(_colour(rng), (size, size, 3)).copy()


def gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
    else:  # radial
        cy, cx = rng.uniform(0, 1, 2)
        t = np.hypot(yy - cy, xx - cx)
    t = (t - t.min()) / max(np.ptp(t), 1e-9)
    return (1 - t)[..., None] * _colour(rng) + t[..., None] * _colour(rng)


def noise(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:
        return rng.uniform(0, 255, (size, size, 3))
    if kind == 1:
        return rng.normal(_colour(rng), rng.uniform(10, 80), (size, size, 3))
    return np.where(rng.random((size, size, 1)) < 0.5, 0.0, 255.0) * np.ones(3)


def text(rng: np.random.Generator, size: int) -> np.ndarray:
    paper = rng.integers(200, 256, 3)
    ink = tuple(int(v) for v in rng.integers(0, 90, 3))
    img = Image.new("RGB", (size * 2, size * 2), tuple(int(v) for v in paper))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=int(rng.integers(max(8, size // 8), max(10, size // 3))))
    y = int(rng.integers(0, size // 4))
    while y < size * 2:
        line = " ".join(rng.choice(WORDS, int(rng.integers(2, 6))))
        draw.text((int(rng.integers(-size // 4, size // 4)), y), line, fill=ink, font=font)
        y += int(font.size * rng.uniform(1.2, 1.8))
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS), np.float64)


def stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(4, size / 2)
    t = (np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period) > 0).astype(
        np.float64
    )
    return (1 - t)[..., None] * _colour(rng) + t[..., None] * _colour(rng)


def checkerboard(rng: np.random.Generator, size: int) -> np.ndarray:
    square = int(rng.integers(4, max(5, size // 3)))
    yy, xx = np.mgrid[0:size, 0:size] // square
    t = ((yy + xx) % 2).astype(np.float64)
    return (1 - t)[..., None] * _colour(rng) + t[..., None] * _colour(rng)


def shapes(rng: np.random.Generator, size: int) -> np.ndarray:
    img = Image.new("RGB", (size, size), tuple(int(v) for v in _colour(rng)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 10, size // 2, 2)
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        fill = tuple(int(v) for v in _colour(rng))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return np.asarray(img, np.float64)


KINDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "blank": blank,
    "gradient": gradient,
    "noise": noise,
    "text": text,
    "stripes": stripes,
    "checkerboard": checkerboard,
    "shapes": shapes,
}


def tiles(cells: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` images each made of 2x2 to 4x4 of ``cells`` (uint8, N x S x S x 3), shrunk to one
    cell's size: several cells in one picture, as a smear field at low magnification."""
    rng = np.random.default_rng(seed)
    size = cells.shape[1]
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        k = int(rng.integers(2, 5))
        pick = rng.integers(0, len(cells), k * k)
        grid = (
            cells[pick]
            .reshape(k, k, size, size, 3)
            .transpose(0, 2, 1, 3, 4)
            .reshape(k * size, k * size, 3)
        )
        out[i] = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.LANCZOS))
    return out


def non_cell_images(
    size: int = 96, per_kind: int = 16, seed: int = 0, cells: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """``per_kind`` uint8 images of each kind in ``KINDS`` (and, given ``cells``, of ``tiles``)."""
    rng = np.random.default_rng(seed)
    out = {
        name: np.stack(
            [np.clip(np.round(make(rng, size)), 0, 255).astype(np.uint8) for _ in range(per_kind)]
        )
        for name, make in KINDS.items()
    }
    if cells is not None and len(cells):
        out["tiles"] = tiles(np.asarray(cells), per_kind, seed)
    return out
