"""One image in, one uint8 RGB square out: decoding, conversion to 8-bit RGB and resizing, the
same for training data (``ingest``) and for images to classify (``predict``).

An image of another size is centre-cropped to a square (the shorter side) and resized with a
Lanczos filter, the method that made the 96x96 PBC derivative. Grayscale, RGBA/LA/palette and
16-bit images become 8-bit RGB (alpha composited on white); each conversion is counted.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MIN_SIZE, MAX_SIZE = 32, 512


class IngestError(ValueError):
    """The input breaks a rule; the message names the file or row and the rule."""


def check_image_size(size: int) -> int:
    if not (isinstance(size, int) and MIN_SIZE <= size <= MAX_SIZE):
        raise IngestError(
            f"image_size {size!r} (rule: an integer from {MIN_SIZE} to {MAX_SIZE} pixels)"
        )
    return size


def to_rgb8(img: Image.Image, conversions: Counter) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, counting what was converted."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data keeps its full range: scale 0..65535 down to 0..255.
        conversions["16bit_to_8bit"] += 1
        arr8 = np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8)
        conversions["grayscale_to_rgb"] += 1
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        conversions["alpha_removed"] += 1
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("L", "1"):
        conversions["grayscale_to_rgb"] += 1
        return img.convert("RGB")
    conversions[f"{mode}_to_rgb"] += 1
    return img.convert("RGB")


def fit_size(img: Image.Image, size: int, conversions: Counter) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` x ``size`` (Lanczos); unchanged if it fits."""
    if img.size == (size, size):
        return img
    conversions["resized"] += 1
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def fit_array(arr: np.ndarray, size: int, conversions: Counter) -> np.ndarray:
    """A uint8 RGB array brought to ``size`` x ``size`` as ``fit_size`` does."""
    if arr.shape[:2] == (size, size):
        return arr
    return np.asarray(fit_size(Image.fromarray(arr), size, conversions), dtype=np.uint8)


def load_image(path: Path, image_size: int, conversions: Counter) -> np.ndarray:
    """One image file as uint8 (size, size, 3); any problem is an :class:`IngestError` naming it."""
    return _read_image(
        path, image_size, conversions, str(path), "every file in a class folder is an image"
    )


def decode_image(
    data: bytes,
    image_size: int,
    conversions: Counter,
    where: str,
    formats: tuple[str, ...] | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """An image file's bytes as uint8 (size, size, 3), decoded, converted and resized exactly as
    :func:`load_image` does a file. ``where`` names the image in errors; ``formats`` (PIL format
    names) limits the decoders tried; ``max_pixels`` (at most PIL's ``MAX_IMAGE_PIXELS``) refuses a
    larger image from its header, before decoding it. Any problem is an :class:`IngestError` naming
    it and the rule."""
    if not data:
        raise IngestError(f"{where}: empty (rule: an image has at least one byte)")
    return _read_image(
        io.BytesIO(data),
        image_size,
        conversions,
        where,
        f"an image is a {'/'.join(formats)} file" if formats else "an image is a file PIL can read",
        formats,
        max_pixels,
    )


def _read_image(
    fp,
    image_size: int,
    conversions: Counter,
    where: str,
    image_rule: str,
    formats: tuple[str, ...] | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    limit = (
        max_pixels or Image.MAX_IMAGE_PIXELS
    )  # PIL refuses images over twice its limit by itself
    try:
        with Image.open(fp, formats=formats) as img:
            if max_pixels and img.width * img.height > max_pixels:
                raise Image.DecompressionBombError(
                    f"{img.width}x{img.height} = {img.width * img.height} pixels"
                )
            img.load()  # decode fully now: a truncated file fails here, not later
            img = to_rgb8(img, conversions)
            img = fit_size(img, image_size, conversions)
            return np.asarray(img, dtype=np.uint8)
    except UnidentifiedImageError:
        raise IngestError(f"{where}: not an image file PIL can read (rule: {image_rule})") from None
    except Image.DecompressionBombError as exc:
        raise IngestError(f"{where}: {exc} (rule: an image has at most {limit} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise IngestError(
            f"{where}: unreadable or truncated image ({exc}) (rule: every image decodes completely)"
        ) from None
