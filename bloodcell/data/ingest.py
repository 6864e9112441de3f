"""Reading a data source: a class-per-folder tree, the 96x96 challenge ``.npz`` or a MedMNIST
``.npz`` (labelled), or any folder or ``.npz`` of images to classify (unlabelled).

Every problem with the input raises :class:`IngestError` naming the file (or the npz row) and
the rule it broke. Nothing is returned, and so no artifact is written, unless all of it is good.
Each image goes through ``bloodcell.data.images`` (8-bit RGB, centre crop, Lanczos resize); an
``.npz`` is read a chunk at a time through ``bloodcell.data.npz``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bloodcell import CLASS_NAMES
from bloodcell.data.classes import MIN_CLASSES, check_class_list, folder_classes, mapped_classes
from bloodcell.data.dataset import UNLABELED, Dataset, npz_id
from bloodcell.data.decode import collect, decoded
from bloodcell.data.images import IngestError, check_image_size
from bloodcell.data.npz import labels_from_array, npz_array, npz_header, npz_images, open_npz

# Files a folder of images to classify may carry beside the images (an attribution README, a
# licence, a manifest): skipped by read_unlabeled and counted in its log. Any other file must be an
# image.
DOC_SUFFIXES = {".md", ".txt", ".rst", ".csv", ".json", ".yaml", ".yml", ".html", ".pdf"}
DOC_NAMES = {"README", "LICENSE", "LICENCE", "NOTICE", "COPYING", "AUTHORS"}
MEDMNIST_PARTS = ("train", "val", "test")

logger = logging.getLogger("bloodcell.data.ingest")

__all__ = ["IngestError", "read_external", "read_source", "read_unlabeled"]


def list_folder(
    root: Path,
    classes: Sequence[str] | None = None,
    class_map: dict[str, str] | None = None,
    min_classes: int = MIN_CLASSES,
) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class list of a folder with one sub-folder per class, and its image files with their
    labels, in the order a dataset holds them: class folders sorted by name, each one's files
    sorted by name. An empty class folder or a folder inside one is an :class:`IngestError`."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_names, class_of = folder_classes(folders, classes, class_map, str(root), min_classes)
    files: list[tuple[Path, int]] = []
    for name in folders:
        label = class_names.index(class_of[name])
        files += [(p, label) for p in class_files(root / name)]
    return class_names, files


def class_files(folder: Path) -> list[Path]:
    """The image files of one class folder, sorted by name (hidden files skipped)."""
    with os.scandir(folder) as it:  # the entries' types come with the listing: no stat a file
        listed = sorted((e.name, e.is_dir()) for e in it if not e.name.startswith("."))
    nested = [name for name, is_dir in listed if is_dir]
    if nested:
        raise IngestError(
            f"{folder / nested[0]}: nested folder inside a class folder (rule: class folders hold "
            "image files only)"
        )
    if not listed:
        raise IngestError(
            f"{folder}: empty class folder (rule: every class folder holds at least one image)"
        )
    return [folder / name for name, _ in listed]


def read_files(
    root: Path,
    files: Sequence[tuple[Path, int]],
    image_size: int,
    class_names: list[str],
    info: dict,
    sink: str | None = None,
) -> Dataset:
    """``files`` (paths under ``root``, with labels) decoded into a dataset, ids their paths
    relative to ``root``; ``sink`` as in ``read_folder``."""
    conversions: Counter = Counter()
    paths = [p for p, _ in files]
    images = collect(decoded(paths, image_size, conversions), image_size, sink)
    return Dataset(
        images=images,
        labels=np.array([label for _, label in files], dtype=np.int64),
        ids=[p.relative_to(root).as_posix() for p in paths],
        class_names=class_names,
        info={**info, "conversions": dict(conversions)},
    )


def read_folder(
    root: Path,
    image_size: int = 96,
    classes: Sequence[str] | None = None,
    class_map: dict[str, str] | None = None,
    min_classes: int = MIN_CLASSES,
    sink: str | None = None,
) -> Dataset:
    """A folder with one sub-folder per class: the classes are the sub-folder names, sorted, after
    ``class_map`` (or ``classes``, which the folders must then match: ``bloodcell.data.classes``).
    ``sink`` (a folder, any ``fileio`` path): the images are written there as shards while they are
    decoded, and the dataset's images are those shards (memory holds one shard, whatever the
    size)."""
    check_image_size(image_size)
    class_names, files = list_folder(root, classes, class_map, min_classes)
    return read_files(root, files, image_size, class_names, folder_info(root, class_map), sink)


def folder_info(root: Path, class_map: dict[str, str] | None) -> dict:
    """The provenance a folder source's dataset carries (its conversions are added as read)."""
    info: dict = {"source": str(root), "format": "folder"}
    if class_map:
        info["class_map"] = {str(k): str(v) for k, v in class_map.items()}
    return info


def read_npz(
    path: Path,
    image_size: int = 96,
    classes: Sequence[str] | None = None,
    class_map: dict[str, str] | None = None,
    sink: str | None = None,
) -> Dataset:
    """The challenge format (``images``, ``labels``) or MedMNIST (``train_images`` ... merged).
    ``classes`` names the label indices (PBC's 8 by default); ``class_map`` renames or merges them.
    The images are read ``bloodcell.data.npz.NPZ_ROWS`` at a time; with ``sink`` they go there as
    shards (as ``read_folder``), so memory holds a chunk, not the array."""
    check_image_size(image_size)
    class_names = check_class_list(CLASS_NAMES if classes is None else classes, str(path))
    npz = open_npz(path)
    keys = set(npz.files)
    with npz:
        if {"images", "labels"} <= keys:
            parts = [("", "images", "labels")]
            fmt = "challenge_npz"
        elif any(f"{p}_images" in keys for p in MEDMNIST_PARTS):
            parts = []
            for p in MEDMNIST_PARTS:
                if (f"{p}_images" in keys) != (f"{p}_labels" in keys):
                    raise IngestError(
                        f"{path}: has only one of {p}_images / {p}_labels (rule: MedMNIST parts "
                        "come in pairs)"
                    )
                if f"{p}_images" in keys:
                    parts.append((p, f"{p}_images", f"{p}_labels"))
            fmt = "medmnist_npz"
        else:
            raise IngestError(
                f"{path}: keys {sorted(keys)} (rule: 'images' and 'labels', or MedMNIST "
                "'train_images'/'train_labels' [+ val_, test_])"
            )
        labels, ids = [], []
        for (
            part,
            ikey,
            lkey,
        ) in parts:  # headers and labels first: a bad one fails before any image is read
            n = npz_header(path, ikey, f"{path}:{ikey}")[0][0]
            labels.append(
                labels_from_array(
                    npz_array(npz, lkey, f"{path}:{lkey}"), n, f"{path}:{lkey}", len(class_names)
                )
            )
            ids.extend(npz_id(path.name, part, row) for row in range(n))
    conversions: Counter = Counter()
    chunks = (c for _, ikey, _ in parts for c in npz_images(path, ikey, image_size, conversions))
    images = collect(chunks, image_size, sink)
    names, new_index = mapped_classes(class_names, class_map, str(path))
    info = {"source": str(path), "format": fmt, "conversions": dict(conversions)}
    if class_map:
        info["class_map"] = {str(k): str(v) for k, v in class_map.items()}
    return Dataset(
        images=images,
        labels=new_index[np.concatenate(labels)],
        ids=ids,
        class_names=names,
        info=info,
    )


def read_source(
    source: str | os.PathLike,
    image_size: int = 96,
    classes: Sequence[str] | None = None,
    class_map: dict[str, str] | None = None,
    sink: str | None = None,
) -> Dataset:
    """Read a class-per-folder tree or an ``.npz`` file (``bloodcell.data.classes`` for the class
    list).
    ``sink``: where the images are written as shards while they are read, so that memory holds
    one shard or chunk (``read_folder``, ``read_npz``)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise IngestError(
            f"{path}: no such file or folder (rule: the data source exists; give a folder of class "
            "folders or an .npz)"
        )
    if path.is_dir():
        ds = read_folder(path, image_size, classes, class_map, sink=sink)
    elif path.suffix.lower() == ".npz":
        ds = read_npz(path, image_size, classes, class_map, sink=sink)
    else:
        raise IngestError(
            f"{path}: neither a folder nor an .npz file (rule: the source is a folder of class "
            "folders or an .npz)"
        )
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
        if (
            not isinstance(spec, dict)
            or not {"name", "path"} <= set(spec)
            or set(spec) - set(EXTERNAL_KEYS)
        ):
            raise IngestError(
                f"external[{i}]: {spec!r} (rule: each external set is a mapping with name, path "
                "and optionally class_map)"
            )
        name = str(spec["name"])
        if name in parts or not name or "/" in name:
            raise IngestError(
                f"external[{i}]: name {name!r} (rule: set names are unique, non-empty, without '/')"
            )
        path = Path(str(spec["path"])).expanduser()
        if not path.is_dir():
            raise IngestError(
                f"external[{i}] ({name}): {path}: no such folder (rule: an external set is a "
                "folder with one sub-folder per class)"
            )
        parts[name] = read_folder(path, image_size, None, spec.get("class_map"), min_classes=1)
    names = sorted({c for ds in parts.values() for c in ds.class_names})
    images, labels, ids, ranges = [], [], [], {}
    for name, ds in parts.items():
        start = len(ids)
        images.append(ds.images)
        labels.append(np.array([names.index(c) for c in ds.class_names], dtype=np.int64)[ds.labels])
        ids += [f"{name}/{sid}" for sid in ds.ids]
        ranges[name] = {"path": ds.info["source"], "start": start, "stop": len(ids)}
    return Dataset(
        images=np.concatenate(images)
        if images
        else np.empty((0, image_size, image_size, 3), np.uint8),
        labels=np.concatenate(labels) if labels else np.empty(0, np.int64),
        ids=ids,
        class_names=names,
        info={"source": "external", "format": "external", "sets": ranges},
    )


def _is_doc(path: Path) -> bool:
    return path.suffix.lower() in DOC_SUFFIXES or path.stem.upper() in DOC_NAMES


def read_unlabeled(
    source: str | os.PathLike, image_size: int = 96, sink: str | None = None
) -> Dataset:
    """Images to classify, as an unlabelled :class:`Dataset`: every image file under a folder
    (recursively, ids relative to it; documentation files are skipped and logged), or the
    ``images`` (or MedMNIST ``*_images``) arrays of an ``.npz`` (ids ``file.npz:row``). Labels,
    where present, are ignored. Bad input raises :class:`IngestError`. ``sink``: where the images
    are written as shards while they are read (memory holds one shard or chunk), as
    ``read_source``."""
    check_image_size(image_size)
    path = Path(source).expanduser()
    if not path.exists():
        raise IngestError(
            f"{path}: no such file or folder (rule: give a folder of images or an .npz)"
        )
    conversions: Counter = Counter()
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        docs = [p for p in found if _is_doc(p)]
        files = [p for p in found if p not in docs]
        if docs:
            logger.info(
                "%s: skipped %d documentation files (%s)",
                path,
                len(docs),
                ", ".join(p.relative_to(path).as_posix() for p in docs)[:200],
            )
        if not files:
            raise IngestError(f"{path}: no files (rule: at least one image)")
        images = collect(decoded(files, image_size, conversions), image_size, sink)
        ids = [p.relative_to(path).as_posix() for p in files]
        fmt = "folder"
    elif path.suffix.lower() == ".npz":
        with open_npz(path) as npz:
            keys = (
                ["images"]
                if "images" in npz.files
                else [f"{p}_images" for p in MEDMNIST_PARTS if f"{p}_images" in npz.files]
            )
            if not keys:
                raise IngestError(
                    f"{path}: keys {sorted(npz.files)} (rule: an 'images' array, or MedMNIST "
                    "'*_images')"
                )
        ids = []
        for key in keys:
            part = key[: -len("_images")] if key != "images" else ""
            ids += [
                npz_id(path.name, part, row)
                for row in range(npz_header(path, key, f"{path}:{key}")[0][0])
            ]
        images = collect(
            (c for key in keys for c in npz_images(path, key, image_size, conversions)),
            image_size,
            sink,
        )
        fmt = "npz"
    else:
        raise IngestError(
            f"{path}: neither a folder nor an .npz file (rule: give a folder of images or an .npz)"
        )
    return Dataset(
        images=images,
        labels=np.full(len(ids), UNLABELED),
        ids=ids,
        info={"source": str(path), "format": fmt, "conversions": dict(conversions)},
    )
