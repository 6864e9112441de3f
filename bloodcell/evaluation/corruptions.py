"""Image corruptions at graded severities, for the robustness table in ``evaluate``.

Each corruption maps uint8 RGB images (N, H, W, 3) to corrupted uint8 images of the same shape.
Severity 1..3 picks the setting from ``SEVERITIES`` (mild to strong).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def jpeg(images: np.ndarray, quality: float) -> np.ndarray:
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    return _clip(gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma, 0)))


def brightness(images: np.ndarray, factor: float) -> np.ndarray:
    return _clip(images.astype(np.float32) * factor)


def contrast(images: np.ndarray, factor: float) -> np.ndarray:
    x = images.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return _clip(mean + (x - mean) * factor)


def saturation(images: np.ndarray, factor: float) -> np.ndarray:
    x = images.astype(np.float32)
    gray = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    return _clip(gray + (x - gray) * factor)


def pixelate(images: np.ndarray, block: float) -> np.ndarray:
    h, w = images.shape[1:3]
    small = (max(1, int(w / block)), max(1, int(h / block)))
    out = np.empty_like(images)
    for i, img in enumerate(images):
        out[i] = np.asarray(
            Image.fromarray(img).resize(small, Image.BOX).resize((w, h), Image.NEAREST)
        )
    return out


CORRUPTIONS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "jpeg": jpeg,
    "blur": blur,
    "brightness": brightness,
    "contrast": contrast,
    "saturation": saturation,
    "pixelate": pixelate,
}
# the setting at severity 1, 2, 3: JPEG quality, Gaussian sigma (px), brightness/contrast/saturation
# factor, pixel block size
SEVERITIES: dict[str, tuple[float, float, float]] = {
    "jpeg": (50, 25, 10),
    "blur": (0.75, 1.5, 2.5),
    "brightness": (0.8, 0.6, 0.4),
    "contrast": (0.7, 0.5, 0.3),
    "saturation": (0.6, 0.3, 0.0),
    "pixelate": (1.5, 2.0, 3.0),
}


def corrupt(images: np.ndarray, name: str, severity: int) -> np.ndarray:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)}")
    if not 1 <= severity <= len(SEVERITIES[name]):
        raise ValueError(f"severity must be 1..{len(SEVERITIES[name])}, got {severity}")
    return CORRUPTIONS[name](images, SEVERITIES[name][severity - 1])
