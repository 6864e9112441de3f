"""Cell subtypes read from file names, for an auxiliary training head.

PBC names its files by subtype: ``ig/MY_1234.jpg`` (myelocyte), ``MMY_`` (metamyelocyte), ``PMY_``
(promyelocyte); ``neutrophil/BNE_...`` (band) and ``SNE_...`` (segmented). The 8 classes lump
these together, and most of a model's errors sit on exactly those boundaries (band neutrophils
against metamyelocytes). Training a second softmax over the subtypes next to the 8-class output
gives the shared features that finer supervision; the head is dropped afterwards, so the shipped
model still outputs the 8 class probabilities.

The *fine classes* are: each class named in ``subtypes`` split into its listed subtypes
(``ig/MY``, ...), every other class whole. A sample of a split class whose file name carries none
of its listed subtypes (PBC's generic ``IG_`` files) gets the class's probability spread evenly
over its subtypes as the fine target.
"""

from __future__ import annotations

import logging

import numpy as np

from bloodcell.dataset import Dataset

logger = logging.getLogger(__name__)


def subtype_of(sample_id: str) -> str:
    """The subtype a sample's id names: the file name's part before the first ``_``, upper-cased
    (``ig/MY_1234.jpg#aug2`` -> ``MY``); generated samples take their source's."""
    name = sample_id.split("#aug", 1)[0].replace("\\", "/").rsplit("/", 1)[-1]
    return name.split("_", 1)[0].upper() if "_" in name else ""


def fine_classes(train: Dataset, subtypes: dict[str, list[str]] | None) -> list[str]:
    """The fine classes for ``subtypes`` (class name -> its subtypes), keeping only the subtypes
    some training sample's file name carries (a warning names each one dropped) and splitting
    only classes left with two or more. A class name that is not one of ``train``'s is an error.
    An empty list means no class is split: there is nothing for a subtype head to learn."""
    subtypes = subtypes or {}
    unknown = sorted(set(subtypes) - set(train.class_names))
    if unknown:
        raise ValueError(f"subtypes: unknown class(es) {unknown}; the classes are {train.class_names}")
    seen: dict[int, set[str]] = {}
    for label, sid in zip(train.labels, train.ids):
        seen.setdefault(int(label), set()).add(subtype_of(sid))
    out: list[str] = []
    for c, name in enumerate(train.class_names):
        listed = [str(s).upper() for s in subtypes.get(name, [])]
        found = [s for s in listed if s in seen.get(c, set())]
        for s in sorted(set(listed) - set(found)):
            logger.warning("subtypes: no training sample of class %r has a file name starting with '%s_'; "
                           "subtype %s left out", name, s, s)
        if len(found) >= 2:
            out += [f"{name}/{s}" for s in found]
        else:
            out.append(name)
    return out if any("/" in f for f in out) else []


def fine_targets(ds: Dataset, fine: list[str]) -> np.ndarray:
    """(N, len(fine)) float32 targets over the fine classes: one-hot where the sample's class is
    whole or its file name names one of the class's subtypes, else spread evenly over them."""
    columns: dict[str, list[int]] = {}
    for j, f in enumerate(fine):
        columns.setdefault(f.split("/", 1)[0], []).append(j)
    index = {f: j for j, f in enumerate(fine)}
    out = np.zeros((len(ds), len(fine)), np.float32)
    for i, (label, sid) in enumerate(zip(ds.labels, ds.ids)):
        name = ds.class_names[int(label)]
        j = index.get(name, index.get(f"{name}/{subtype_of(sid)}"))
        if j is not None:
            out[i, j] = 1.0
        else:
            out[i, columns[name]] = 1.0 / len(columns[name])
    return out
