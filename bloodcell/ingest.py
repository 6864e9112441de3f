"""Reading a data source: a class-per-folder tree, the 96x96 challenge ``.npz`` or a MedMNIST
``.npz`` (labelled), or any folder or ``.npz`` of images to classify (unlabelled).

Every problem with the input raises :class:`IngestError` naming the file (or the npz row) and
the rule it broke. Nothing is returned, and so no artifact is written, unless all of it is good.
Each image goes through ``bloodcell.images`` (8-bit RGB, centre crop, Lanczos resize).
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from bloodcell import CLASS_NAMES
from bloodcell.classes import MIN_CLASSES, check_class_list, folder_classes, mapped_classes
from bloodcell.dataset import UNLABELED, Dataset, npz_id
from bloodcell.decode import collect, decoded
from bloodcell.images import IngestError, check_image_size, fit_array

# Files a folder of images to classify may carry beside the images (an attribution README, a
# licence, a manifest): skipped by read_unlabeled and counted in its log. Any other file must be an image.
DOC_SUFFIXES = {".md", ".txt", ".rst", ".csv", ".json", ".yaml", ".yml", ".html", ".pdf"}
DOC_NAMES = {"README", "LICENSE", "LICENCE", "NOTICE", "COPYING", "AUTHORS"}
MEDMNIST_PARTS = ("train", "val", "test")

logger = logging.getLogger("bloodcell.ingest")

__all__ = ["IngestError", "read_external", "read_source", "read_unlabeled"]


def read_folder(root: Path, image_size: int = 96, classes: Sequence[str] | None = None,
                class_map: dict[str, str] | None = None, min_classes: int = MIN_CLASSES,
                sink: str | None = None) -> Dataset:
    """A folder with one sub-folder per class: the classes are the sub-folder names, sorted, after
    ``class_map`` (or ``classes``, which the folders must then match: ``bloodcell.classes``).
    ``sink`` (a folder, any ``fileio`` path): the images are written there as shards while they are
    decoded, and the dataset's images are those shards (memory holds one shard, whatever the size)."""
    check_image_size(image_size)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_names, class_of = folder_classes(folders, classes, class_map, str(root), min_classes)
    files: list[tuple[Path, int]] = []
    for name in folders:
        folder = root / name
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        if not any(p.is_file() for p in entries):
            raise IngestError(f"{folder}: empty class folder (rule: every class folder holds at least one image)")
        for p in entries:
            if p.is_dir():
                raise IngestError(f"{p}: nested folder inside a class folder (rule: class folders hold image files only)")
            files.append((p, class_names.index(class_of[name])))
    conversions: Counter = Counter()
    paths = [p for p, _ in files]
    images = collect(decoded(paths, image_size, conversions), image_size, sink)
    ids = [p.relative_to(root).as_posix() for p, _ in files]
    info = {"source": str(root), "format": "folder", "conversions": dict(conversions)}
    if class_map:
        info["class_map"] = {str(k): str(v) for k, v in class_map.items()}
    return Dataset(images=images, labels=np.array([label for _, label in files], dtype=np.int64), ids=ids,
                   class_names=class_names, info=info)


def _check_image_shape(shape: tuple[int, ...], where: str) -> None:
    ok = (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3, 4))) and shape[1] >= 1 and shape[2] >= 1
    if not ok:
        raise IngestError(f"{where}: images have shape {shape} "
                          "(rule: (N, H, W, 3) RGB, or (N, H, W) / (N, H, W, 1) grayscale, or (N, H, W, 4) RGBA)")


def _float_scale(chunks: Iterable[np.ndarray], where: str) -> float:
    """The factor that brings float pixels to 0..255 (255 for 0..1 images, 1 for 0..255), judged on
    the whole array (given in chunks); a NaN names its row, out-of-range values are refused."""
    lo, hi, start = 0.0, 0.0, 0
    for c in chunks:
        bad = ~np.isfinite(c).reshape(len(c), -1).all(axis=1)
        if bad.any():
            raise IngestError(f"{where} row {start + int(np.argmax(bad))}: NaN or infinite pixel (rule: pixel values are finite)")
        lo, hi, start = min(lo, float(c.min(initial=0.0))), max(hi, float(c.max(initial=0.0))), start + len(c)
    scale = 255.0 if hi <= 1.0 else 1.0
    if lo < 0 or hi * scale > 255.0:
        raise IngestError(f"{where}: float pixels outside 0..1 or 0..255 (rule: pixel values are 0..255 uint8)")
    return scale


def _images_from_array(arr: np.ndarray, where: str, image_size: int, conversions: Counter,
                       scale: float | None = None) -> np.ndarray:
    """Validate and convert npz images to uint8 (N, size, size, 3); float pixels are multiplied by
    ``scale`` (default: ``_float_scale`` of ``arr`` itself)."""
    _check_image_shape(arr.shape, where)
    if arr.ndim == 3:  # (N, H, W) grayscale
        arr = arr[..., None]
    if arr.dtype.kind == "f":
        scale = _float_scale([arr], where) if scale is None else scale
        conversions["float_to_uint8"] += len(arr)
        arr = np.round(arr * scale).astype(np.uint8)
    elif arr.dtype == np.uint16:
        conversions["16bit_to_8bit"] += len(arr)
        arr = np.round(arr / 257.0).astype(np.uint8)
    elif arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise IngestError(f"{where}: integer pixels outside 0..255 (rule: pixel values are 0..255 uint8)")
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


def _labels_from_array(arr: np.ndarray, n: int, where: str, num_classes: int) -> np.ndarray:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise IngestError(f"{where}: labels have shape {arr.shape} (rule: (N,) or (N, 1))")
    if len(arr) != n:
        raise IngestError(f"{where}: {len(arr)} labels for {n} images (rule: one label per image)")
    if arr.dtype.kind not in "iuf":
        raise IngestError(f"{where}: labels have dtype {arr.dtype} (rule: integer class indices)")
    bad = ~np.isfinite(arr) if arr.dtype.kind == "f" else np.zeros(len(arr), bool)
    bad |= (arr < 0) | (arr >= num_classes) | (arr != np.floor(arr) if arr.dtype.kind == "f" else False)
    if bad.any():
        row = int(np.argmax(bad))
        raise IngestError(f"{where} row {row}: label {arr[row]} (rule: labels are integers in 0..{num_classes - 1})")
    return arr.astype(np.int64)


def _open_npz(path: Path):
    """``np.load`` without pickle; an unreadable archive is an :class:`IngestError`."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError ...
        raise IngestError(f"{path}: cannot be read as an .npz archive ({exc})") from None


def _npz_array(npz, key: str, where: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise IngestError(f"{where}: {exc} (rule: plain numeric arrays, no pickled objects)") from None


NPZ_ROWS = 4096  # images read from an .npz at a time


@contextmanager
def _npy_member(path: Path, key: str, where: str) -> Iterator[tuple[tuple[int, ...], bool, np.dtype, IO[bytes]]]:
    """The ``key`` array of the archive as its header (shape, Fortran order, dtype) and the open
    member, positioned at the first byte of data: read as it decompresses, never whole."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if dtype.hasobject:
            raise IngestError(f"{where}: an object array (rule: plain numeric arrays, no pickled objects)")
        _check_image_shape(shape, where)
        yield shape, fortran, dtype, f


def _npz_header(path: Path, key: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    with _npy_member(path, key, where) as (shape, _, dtype, _):
        return shape, dtype


def _npz_chunks(path: Path, key: str, where: str) -> Iterator[np.ndarray]:
    """The ``key`` image array of the archive, ``NPZ_ROWS`` rows at a time (one empty chunk if it has none)."""
    rows = NPZ_ROWS
    with _npy_member(path, key, where) as (shape, fortran, dtype, f):
        if fortran:  # column-major: rows are not contiguous, so it is read whole (numpy writes C order)
            yield np.frombuffer(f.read(), dtype).reshape(shape, order="F")
            return
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        for a in range(0, max(shape[0], 1), rows):
            k = min(rows, shape[0] - a)
            data = f.read(k * row_bytes)
            if len(data) != k * row_bytes:
                raise IngestError(f"{where}: the array ends inside row {a + len(data) // row_bytes} of {shape[0]} "
                                  "(rule: a complete array)")
            yield np.frombuffer(data, dtype).reshape((k, *shape[1:]))


def _npz_images(path: Path, key: str, image_size: int, conversions: Counter) -> Iterator[np.ndarray]:
    """The ``key`` images of the archive, checked and converted (``_images_from_array``), a chunk at a
    time; float arrays are read twice, first for their range (which decides their scale)."""
    where = f"{path}:{key}"
    _, dtype = _npz_header(path, key, where)
    scale = _float_scale(_npz_chunks(path, key, where), where) if dtype.kind == "f" else None
    for chunk in _npz_chunks(path, key, where):
        yield _images_from_array(chunk, where, image_size, conversions, scale)


def read_npz(path: Path, image_size: int = 96, classes: Sequence[str] | None = None,
             class_map: dict[str, str] | None = None, sink: str | None = None) -> Dataset:
    """The challenge format (``images``, ``labels``) or MedMNIST (``train_images`` ... merged).
    ``classes`` names the label indices (PBC's 8 by default); ``class_map`` renames or merges them.
    The images are read ``NPZ_ROWS`` at a time; with ``sink`` they go there as shards (as
    ``read_folder``), so memory holds a chunk, not the array."""
    check_image_size(image_size)
    class_names = check_class_list(CLASS_NAMES if classes is None else classes, str(path))
    npz = _open_npz(path)
    keys = set(npz.files)
    with npz:
        if {"images", "labels"} <= keys:
            parts = [("", "images", "labels")]
            fmt = "challenge_npz"
        elif any(f"{p}_images" in keys for p in MEDMNIST_PARTS):
            parts = []
            for p in MEDMNIST_PARTS:
                if (f"{p}_images" in keys) != (f"{p}_labels" in keys):
                    raise IngestError(f"{path}: has only one of {p}_images / {p}_labels (rule: MedMNIST parts come in pairs)")
                if f"{p}_images" in keys:
                    parts.append((p, f"{p}_images", f"{p}_labels"))
            fmt = "medmnist_npz"
        else:
            raise IngestError(
                f"{path}: keys {sorted(keys)} (rule: 'images' and 'labels', or MedMNIST "
                "'train_images'/'train_labels' [+ val_, test_])"
            )
        labels, ids = [], []
        for part, ikey, lkey in parts:  # headers and labels first: a bad one fails before any image is read
            n = _npz_header(path, ikey, f"{path}:{ikey}")[0][0]
            labels.append(_labels_from_array(_npz_array(npz, lkey, f"{path}:{lkey}"), n, f"{path}:{lkey}", len(class_names)))
            ids.extend(npz_id(path.name, part, row) for row in range(n))
    conversions: Counter = Counter()
    chunks = (c for _, ikey, _ in parts for c in _npz_images(path, ikey, image_size, conversions))
    images = collect(chunks, image_size, sink)
    names, new_index = mapped_classes(class_names, class_map, str(path))
    info = {"source": str(path), "format": fmt, "conversions": dict(conversions)}
    if class_map:
        info["class_map"] = {str(k): str(v) for k, v in class_map.items()}
    return Dataset(images=images, labels=new_index[np.concatenate(labels)], ids=ids, class_names=names, info=info)


def read_source(source: str | os.PathLike, image_size: int = 96, classes: Sequence[str] | None = None,
                class_map: dict[str, str] | None = None, sink: str | None = None) -> Dataset:
    """Read a class-per-folder tree or an ``.npz`` file (``bloodcell.classes`` for the class list).
    ``sink``: where the images are written as shards while they are read, so that memory holds
    one shard or chunk (``read_folder``, ``read_npz``)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise IngestError(f"{path}: no such file or folder (rule: the data source exists; give a folder of class folders or an .npz)")
    if path.is_dir():
        ds = read_folder(path, image_size, classes, class_map, sink=sink)
    elif path.suffix.lower() == ".npz":
        ds = read_npz(path, image_size, classes, class_map, sink=sink)
    else:
        raise IngestError(f"{path}: neither a folder nor an .npz file (rule: the source is a folder of class folders or an .npz)")
    if len(ds) == 0:
        raise IngestError(f"{path}: no samples (rule: at least one image)")
    return ds


EXTERNAL_KEYS = ("name", "path", "class_map")


def read_external(sets: Sequence[dict] | None, image_size: int) -> Dataset:
    """Labelled folders of other labs' images (for evaluation only), as one :class:`Dataset`: ids
    ``<set name>/<file>``, class names the union of the sets' classes (each set's folders after its
    own ``class_map``), and ``info["sets"]``: each set's path and its ``[start, stop)`` rows."""
    parts: dict[str, Dataset] = {}
    for i, spec in enumerate(sets or []):
        if not isinstance(spec, dict) or not {"name", "path"} <= set(spec) or set(spec) - set(EXTERNAL_KEYS):
            raise IngestError(f"external[{i}]: {spec!r} (rule: each external set is a mapping with name, path "
                              "and optionally class_map)")
        name = str(spec["name"])
        if name in parts or not name or "/" in name:
            raise IngestError(f"external[{i}]: name {name!r} (rule: set names are unique, non-empty, without '/')")
        path = Path(str(spec["path"])).expanduser()
        if not path.is_dir():
            raise IngestError(f"external[{i}] ({name}): {path}: no such folder (rule: an external set is a folder "
                              "with one sub-folder per class)")
        parts[name] = read_folder(path, image_size, None, spec.get("class_map"), min_classes=1)
    names = sorted({c for ds in parts.values() for c in ds.class_names})
    images, labels, ids, ranges = [], [], [], {}
    for name, ds in parts.items():
        start = len(ids)
        images.append(ds.images)
        labels.append(np.array([names.index(c) for c in ds.class_names], dtype=np.int64)[ds.labels])
        ids += [f"{name}/{sid}" for sid in ds.ids]
        ranges[name] = {"path": ds.info["source"], "start": start, "stop": len(ids)}
    return Dataset(images=np.concatenate(images) if images else np.empty((0, image_size, image_size, 3), np.uint8),
                   labels=np.concatenate(labels) if labels else np.empty(0, np.int64), ids=ids, class_names=names,
                   info={"source": "external", "format": "external", "sets": ranges})


def _is_doc(path: Path) -> bool:
    return path.suffix.lower() in DOC_SUFFIXES or path.stem.upper() in DOC_NAMES


def read_unlabeled(source: str | os.PathLike, image_size: int = 96, sink: str | None = None) -> Dataset:
    """Images to classify, as an unlabelled :class:`Dataset`: every image file under a folder
    (recursively, ids relative to it; documentation files are skipped and logged), or the
    ``images`` (or MedMNIST ``*_images``) arrays of an ``.npz`` (ids ``file.npz:row``). Labels,
    where present, are ignored. Bad input raises :class:`IngestError`. ``sink``: where the images
    are written as shards while they are read (memory holds one shard or chunk), as ``read_source``."""
    check_image_size(image_size)
    path = Path(source).expanduser()
    if not path.exists():
        raise IngestError(f"{path}: no such file or folder (rule: give a folder of images or an .npz)")
    conversions: Counter = Counter()
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        docs = [p for p in found if _is_doc(p)]
        files = [p for p in found if p not in docs]
        if docs:
            logger.info("%s: skipped %d documentation files (%s)", path, len(docs),
                        ", ".join(p.relative_to(path).as_posix() for p in docs)[:200])
        if not files:
            raise IngestError(f"{path}: no files (rule: at least one image)")
        images = collect(decoded(files, image_size, conversions), image_size, sink)
        ids = [p.relative_to(path).as_posix() for p in files]
        fmt = "folder"
    elif path.suffix.lower() == ".npz":
        with _open_npz(path) as npz:
            keys = ["images"] if "images" in npz.files else [f"{p}_images" for p in MEDMNIST_PARTS if f"{p}_images" in npz.files]
            if not keys:
                raise IngestError(f"{path}: keys {sorted(npz.files)} (rule: an 'images' array, or MedMNIST '*_images')")
        ids = []
        for key in keys:
            part = key[: -len("_images")] if key != "images" else ""
            ids += [npz_id(path.name, part, row) for row in range(_npz_header(path, key, f"{path}:{key}")[0][0])]
        images = collect((c for key in keys for c in _npz_images(path, key, image_size, conversions)), image_size, sink)
        fmt = "npz"
    else:
        raise IngestError(f"{path}: neither a folder nor an .npz file (rule: give a folder of images or an .npz)")
    return Dataset(images=images, labels=np.full(len(ids), UNLABELED), ids=ids,
                   info={"source": str(path), "format": fmt, "conversions": dict(conversions)})
