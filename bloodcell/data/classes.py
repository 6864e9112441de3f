"""Class lists: which classes a data source defines, how its folder (or class) names map onto
them, and how a dataset's labels map onto a model's classes.

A class-per-folder source defines its classes: the sub-folder names, sorted, after ``class_map``
(which renames or merges folders: ``{band_neutrophil: neutrophil}``). A config that names the
classes (``classes: [...]``) fixes their order, and the folders must match it. An npz source has
no names of its own: ``classes`` names its label indices (PBC's 8 by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bloodcell.data.images import IngestError

MIN_CLASSES = 2


def check_class_list(names: Sequence[str], where: str, minimum: int = MIN_CLASSES) -> list[str]:
    """``names`` as a list of strings: at least ``minimum``, no duplicates."""
    names = [str(n) for n in names]
    if len(names) < minimum:
        raise IngestError(
            f"{where}: {len(names)} class(es) {names} (rule: at least {minimum} classes)"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise IngestError(
            f"{where}: class(es) {duplicates} named more than once (rule: class names are unique)"
        )
    return names


def _check_map(
    class_map: dict | None, names: Sequence[str], where: str, what: str
) -> dict[str, str]:
    class_map = {str(k): str(v) for k, v in (class_map or {}).items()}
    unknown = sorted(set(class_map) - set(names))
    if unknown:
        raise IngestError(
            f"{where}: class_map names {what} {unknown} that the source does not have "
            f"(rule: class_map renames or merges the source's {what}s: {list(names)})"
        )
    return class_map


def folder_classes(
    folders: Sequence[str],
    classes: Sequence[str] | None,
    class_map: dict | None,
    where: str,
    minimum: int = MIN_CLASSES,
) -> tuple[list[str], dict[str, str]]:
    """The class list of a class-per-folder source with sub-folders ``folders``, and each folder's
    class. With ``classes`` given, the folders (after ``class_map``) must be exactly those
    classes."""
    class_map = _check_map(class_map, folders, where, "folder")
    of_folder = {f: class_map.get(f, f) for f in folders}
    found = sorted(set(of_folder.values()))
    if classes is None:
        return check_class_list(found, where, minimum), of_folder
    names = check_class_list(classes, where)
    missing = [c for c in names if c not in found]
    unexpected = [c for c in found if c not in names]
    if missing or unexpected:
        raise IngestError(
            f"{where}: the class folders {found} (after class_map) do not match classes {names}: "
            f"missing {missing}, unexpected {unexpected} (rule: with classes: given, every class "
            "has a folder and every folder is one of the classes)"
        )
    return names, of_folder


def mapped_classes(
    names: Sequence[str], class_map: dict | None, where: str
) -> tuple[list[str], np.ndarray]:
    """``class_map`` applied to a class list: the new list (sorted, merged) and, for each old class
    index, its new index."""
    class_map = _check_map(class_map, names, where, "class")
    if not class_map:
        return list(names), np.arange(len(names))
    renamed = [class_map.get(n, n) for n in names]
    new = check_class_list(sorted(set(renamed)), where)
    return new, np.array([new.index(n) for n in renamed], dtype=np.int64)


def label_map(data_classes: Sequence[str], model_classes: Sequence[str], where: str) -> np.ndarray:
    """For each of the data's class indices, the model's index of that class; a clear error naming
    the data's classes that the model does not know."""
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        raise ValueError(
            f"{where}: class(es) {unknown} are not among the model's classes {list(model_classes)} "
            "(rule: a model scores only data of the classes it was trained on)"
        )
    return np.array([list(model_classes).index(c) for c in data_classes], dtype=np.int64)
