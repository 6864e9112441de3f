"""Reading images and labels from an ``.npz`` archive without pickle and without holding it whole.

An image array is read from its zip member ``NPZ_ROWS`` rows at a time as it decompresses, each
chunk checked and converted to uint8 (N, size, size, 3) RGB. Float pixels are scaled by a factor
judged on the whole array (so it is read twice). Every problem raises :class:`IngestError` naming
the archive, the array and, where there is one, the row.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from bloodcell.data.images import IngestError, fit_array


def check_image_shape(shape: tuple[int, ...], where: str) -> None:
    ok = (
        (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3, 4)))
        and shape[1] >= 1
        and shape[2] >= 1
    )
    if not ok:
        raise IngestError(
            f"{where}: images have shape {shape} "
            "(rule: (N, H, W, 3) RGB, or (N, H, W) / (N, H, W, 1) grayscale, or (N, H, W, 4) RGBA)"
        )


def float_scale(chunks: Iterable[np.ndarray], where: str) -> float:
    """The factor that brings float pixels to 0..255 (255 for 0..1 images, 1 for 0..255), judged on
    the whole array (given in chunks); a NaN names its row, out-of-range values are refused."""
    lo, hi, start = 0.0, 0.0, 0
    for c in chunks:
        bad = ~np.isfinite(c).reshape(len(c), -1).all(axis=1)
        if bad.any():
            raise IngestError(
                f"{where} row {start + int(np.argmax(bad))}: NaN or infinite pixel (rule: pixel "
                "values are finite)"
            )
        lo, hi, start = (
            min(lo, float(c.min(initial=0.0))),
            max(hi, float(c.max(initial=0.0))),
            start + len(c),
        )
    scale = 255.0 if hi <= 1.0 else 1.0
    if lo < 0 or hi * scale > 255.0:
        raise IngestError(
            f"{where}: float pixels outside 0..1 or 0..255 (rule: pixel values are 0..255 uint8)"
        )
    return scale


def images_from_array(
    arr: np.ndarray, where: str, image_size: int, conversions: Counter, scale: float | None = None
) -> np.ndarray:
    """Validate and convert npz images to uint8 (N, size, size, 3); float pixels are multiplied by
    ``scale`` (default: ``float_scale`` of ``arr`` itself)."""
    check_image_shape(arr.shape, where)
    if arr.ndim == 3:  # (N, H, W) grayscale
        arr = arr[..., None]
    if arr.dtype.kind == "f":
        scale = float_scale([arr], where) if scale is None else scale
        conversions["float_to_uint8"] += len(arr)
        arr = np.round(arr * scale).astype(np.uint8)
    elif arr.dtype == np.uint16:
        conversions["16bit_to_8bit"] += len(arr)
        arr = np.round(arr / 257.0).astype(np.uint8)
    elif arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise IngestError(
                f"{where}: integer pixels outside 0..255 (rule: pixel values are 0..255 uint8)"
            )
        arr = arr.astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise IngestError(f"{where}: images have dtype {arr.dtype} (rule: uint8 pixels)")
    if arr.shape[-1] == 1:
        conversions["grayscale_to_rgb"] += len(arr)
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        conversions["alpha_removed"] += len(arr)
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = np.round(arr[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    if arr.shape[1:3] != (image_size, image_size):
        arr = np.stack([fit_array(a, image_size, conversions) for a in arr])
    return arr


def labels_from_array(arr: np.ndarray, n: int, where: str, num_classes: int) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise IngestError(f"{where}: labels have shape {arr.shape} (rule: (N,) or (N, 1))")
    if len(arr) != n:
        raise IngestError(f"{where}: {len(arr)} labels for {n} images (rule: one label per image)")
    if arr.dtype.kind not in "iuf":
        raise IngestError(f"{where}: labels have dtype {arr.dtype} (rule: integer class indices)")
    bad = ~np.isfinite(arr) if arr.dtype.kind == "f" else np.zeros(len(arr), bool)
    bad |= (
        (arr < 0)
        | (arr >= num_classes)
        | (arr != np.floor(arr) if arr.dtype.kind == "f" else False)
    )
    if bad.any():
        row = int(np.argmax(bad))
        raise IngestError(
            f"{where} row {row}: label {arr[row]} (rule: labels are integers in "
            f"0..{num_classes - 1})"
        )
    return arr.astype(np.int64)


def open_npz(path: Path):
    """``np.load`` without pickle; an unreadable archive is an :class:`IngestError`."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError ...
        raise IngestError(f"{path}: cannot be read as an .npz archive ({exc})") from None


def npz_array(npz, key: str, where: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise IngestError(
            f"{where}: {exc} (rule: plain numeric arrays, no pickled objects)"
        ) from None


NPZ_ROWS = 4096  # images read from an .npz at a time


@contextmanager
def _npy_member(
    path: Path, key: str, where: str
) -> Iterator[tuple[tuple[int, ...], bool, np.dtype, IO[bytes]]]:
    """The ``key`` array of the archive as its header (shape, Fortran order, dtype) and the open
    member, positioned at the first byte of data: read as it decompresses, never whole."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(f)
        if dtype.hasobject:
            raise IngestError(
                f"{where}: an object array (rule: plain numeric arrays, no pickled objects)"
            )
        check_image_shape(shape, where)
        yield shape, fortran, dtype, f


def npz_header(path: Path, key: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    with _npy_member(path, key, where) as (shape, _, dtype, _):
        return shape, dtype


def npz_chunks(path: Path, key: str, where: str) -> Iterator[np.ndarray]:
    """The ``key`` image array of the archive, ``NPZ_ROWS`` rows at a time (one empty chunk if it
    has none)."""
    rows = NPZ_ROWS
    with _npy_member(path, key, where) as (shape, fortran, dtype, f):
        if (
            fortran
        ):  # column-major: rows are not contiguous, so it is read whole (numpy writes C order)
            yield np.frombuffer(f.read(), dtype).reshape(shape, order="F")
            return
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        for a in range(0, max(shape[0], 1), rows):
            k = min(rows, shape[0] - a)
            data = f.read(k * row_bytes)
            if len(data) != k * row_bytes:
                raise IngestError(
                    f"{where}: the array ends inside row {a + len(data) // row_bytes} of "
                    f"{shape[0]} (rule: a complete array)"
                )
            yield np.frombuffer(data, dtype).reshape((k, *shape[1:]))


def npz_images(path: Path, key: str, image_size: int, conversions: Counter) -> Iterator[np.ndarray]:
    """The ``key`` images of the archive, checked and converted (``images_from_array``), a chunk at
    a time; float arrays are read twice, first for their range (which decides their scale)."""
    where = f"{path}:{key}"
    _, dtype = npz_header(path, key, where)
    scale = float_scale(npz_chunks(path, key, where), where) if dtype.kind == "f" else None
    for chunk in npz_chunks(path, key, where):
        yield images_from_array(chunk, where, image_size, conversions, scale)
