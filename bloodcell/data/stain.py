"""A lab's normal stain colour: the per-image channel-mean ranges the ``ingest`` expectation
suite accepts (and the referral rule's per-image stain check, ``bloodcell.model.referral``), and a
profile that proposes them from images a lab trusts (``bloodcell profile FOLDER``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import yaml

CHANNELS = ("mean_r", "mean_g", "mean_b")
# per-image channel means seen on the PBC dataset's May-Gruenwald-Giemsa smears
# (pbc96: R 174-252, G 138-225, B 166-224), widened
PBC_STAIN_RANGES: dict[str, tuple[float, float]] = {
    "mean_r": (140, 255),
    "mean_g": (100, 245),
    "mean_b": (130, 250),
}


def stain_params(ranges: dict[str, Any] | None) -> dict[str, float]:
    """The suite parameters (``mean_r_min``, ``mean_r_max``, ...) for ``ranges`` (channel ->
    [min, max] on 0..255; PBC's where None); a clear error for a malformed range."""
    ranges = PBC_STAIN_RANGES if ranges is None else ranges
    if not isinstance(ranges, dict) or set(ranges) != set(CHANNELS):
        raise ValueError(
            f"stain_ranges {ranges!r} (rule: a range for each of {list(CHANNELS)}, e.g. mean_r: "
            "[140, 255])"
        )
    out = {}
    for channel in CHANNELS:
        value = ranges[channel]
        if not (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and 0 <= float(value[0]) <= float(value[1]) <= 255
        ):
            raise ValueError(
                f"stain_ranges.{channel} {value!r} (rule: [min, max] with 0 <= min <= max <= 255)"
            )
        out[f"{channel}_min"], out[f"{channel}_max"] = float(value[0]), float(value[1])
    return out


def _channels_first(images: np.ndarray, block: int) -> Iterator[np.ndarray]:
    """``images`` (N, H, W, C) as float64 (b, C, H*W) blocks of ``block`` images: small enough
    for the allocator to reuse, and laid out for BLAS dot products."""
    c = images.shape[-1]
    for a in range(0, len(images), block):
        chunk = np.asarray(images[a : a + block])
        yield chunk.reshape(len(chunk), -1, c).transpose(0, 2, 1).astype(np.float64)


def channel_means(images: np.ndarray, block: int = 64) -> np.ndarray:
    """(N, C) per-image channel means, ``block`` images at a time (pixel sums as dot products:
    10x faster than numpy's ``mean`` over the image axes)."""
    n, c = len(images), images.shape[-1]
    pixels = int(np.prod(images.shape[1:-1]))
    means, ones = np.empty((n, c)), np.ones(pixels)
    for a, x in zip(range(0, n, block), _channels_first(images, block)):
        means[a : a + block] = x @ ones
    return means / pixels


def channel_stats(images: np.ndarray, block: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) per-image channel means and standard deviations, in float64 from the sums of the
    pixels and of their squares (as ``channel_means``; equal to numpy's to within 1e-9)."""
    n, c = len(images), images.shape[-1]
    pixels = int(np.prod(images.shape[1:-1]))
    sums, squares, ones = np.empty((n, c)), np.empty((n, c)), np.ones(pixels)
    for a, x in zip(range(0, n, block), _channels_first(images, block)):
        sums[a : a + block] = x @ ones
        squares[a : a + block] = (x[:, :, None, :] @ x[:, :, :, None])[..., 0, 0]
    means = sums / pixels
    return means, np.sqrt(np.maximum(squares / pixels - means**2, 0.0))


def profile(
    images: np.ndarray, margin: float = 10.0, coverage: float = 1.0
) -> dict[str, list[float]]:
    """Ranges that hold the central ``coverage`` of the images' channel means, widened by
    ``margin`` on each side (0..255)."""
    if len(images) == 0:
        raise ValueError("no images to profile")
    tail = (1.0 - coverage) / 2
    low, high = np.quantile(channel_means(images), [tail, 1.0 - tail], axis=0)
    return {
        c: [float(np.floor(max(0.0, lo - margin))), float(np.ceil(min(255.0, hi + margin)))]
        for c, lo, hi in zip(CHANNELS, low, high)
    }


def profile_yaml(ranges: dict[str, list[float]], images: int, source: str) -> str:
    """The config lines to paste: ``stain_ranges`` for ``ingest``."""
    block = {"stain_ranges": {c: [int(v) for v in ranges[c]] for c in CHANNELS}}
    text = yaml.safe_dump(block, default_flow_style=None, sort_keys=False)
    indented = "".join(f"      {line}\n" for line in text.splitlines())
    return (
        f"# stain colour profile of {images} images in {source}: paste under the steps that read "
        f"images\nsteps:\n  ingest:\n    parameters:\n{indented}"
    )
