"""Chunks of a folder source, for reading and scoring it in parallel steps (the fan-out path).

A chunk is a run of consecutive files of one class folder, in the order a dataset holds them
(``bloodcell.data.ingest.list_folder``). Where a chunk ends is decided by the files' own names,
not by their count: a file whose relative path hashes to 0 modulo ``chunk_size`` begins a new
chunk (content-defined chunking, as rsync and restic cut bytes), so chunks hold ``chunk_size``
files on average and no more than ``MAX_CHUNK`` times that (what a chunk step holds). The same
source always gives the same chunks, and adding, removing or editing a file changes only the
chunk it lands in (adding a file that begins a chunk splits one in two).

New images usually come as a batch whose names sort after the old ones (analysers number or date
them). So that such a batch does not reopen the last chunk of each class, a file written more
than ``NEW_AFTER_S`` after the file before it (in name order) also begins a chunk, once the chunk
before holds half a chunk size: a week's images then make chunks of their own, and every old
chunk stays cached.

A chunk is named by its class folder and first file. Its ``digest`` covers each file's relative
path, size and modification time: it is the chunk step's parameter, so ZenML's cache reruns a
chunk whose files changed, and only that one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from bloodcell.data.classes import MIN_CLASSES
from bloodcell.data.dataset import Dataset
from bloodcell.data.images import IngestError, check_image_size
from bloodcell.data.ingest import class_files, folder_info, list_folder, read_files
from bloodcell.data.sharded_images import concat_images
from bloodcell.options import Options

MAX_CHUNK = 2  # a run longer than this many chunk sizes is cut by count
NEW_AFTER_S = 3600  # a file this much newer than the one before it begins a chunk (see above)

Entry = tuple[Path, str, os.stat_result]  # a file, its path relative to the source, its stat


@dataclass(frozen=True)
class Chunk:
    """One chunk: its class folder, label, files (paths relative to the source) and digest."""

    folder: str
    label: int
    files: tuple[str, ...]
    digest: str

    @property
    def name(self) -> str:
        return f"{self.folder}/{Path(self.files[0]).name}"

    def spec(self, source: str, image_size: int, class_names: list[str], chunk_size: int) -> dict:
        """What the chunk step needs to read it again, and nothing that changes when other chunks
        do: the step's parameters, and so its cache key."""
        return {
            "source": source,
            "folder": self.folder,
            "first": Path(self.files[0]).name,
            "files": len(self.files),
            "digest": self.digest,
            "label": self.label,
            "class_names": list(class_names),
            "image_size": image_size,
            "chunk_size": chunk_size,
        }


def _starts_chunk(relpath: str, chunk_size: int) -> bool:
    value = int.from_bytes(hashlib.sha1(relpath.encode()).digest()[:8], "big")
    return value % chunk_size == 0


def _digest(run: Sequence[Entry]) -> str:
    h = hashlib.sha256()
    for _, rel, st in run:
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def entries(folder: Path, files: Sequence[Path]) -> list[Entry]:
    """Each of one class folder's ``files`` with its path relative to the source and its stat."""
    return [(p, f"{folder.name}/{p.name}", p.stat()) for p in files]


def cut(files: Sequence[Entry], chunk_size: int) -> list[list[Entry]]:
    """One class folder's sorted files cut into chunks (the module's rule)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size {chunk_size} (rule: at least 1 file a chunk)")
    runs: list[list[Entry]] = []
    last_time = None
    for entry in files:
        _, rel, st = entry
        newer = last_time is not None and st.st_mtime_ns - last_time > NEW_AFTER_S * 10**9
        if (
            not runs
            or _starts_chunk(rel, chunk_size)
            or len(runs[-1]) >= MAX_CHUNK * chunk_size
            or (newer and 2 * len(runs[-1]) >= chunk_size)
        ):
            runs.append([])
        runs[-1].append(entry)
        last_time = st.st_mtime_ns
    return runs


@dataclass(frozen=True)
class ChunkPlan:
    source: str
    class_names: list[str]
    chunks: list[Chunk]

    def specs(self, image_size: int, chunk_size: int) -> list[dict]:
        return [c.spec(self.source, image_size, self.class_names, chunk_size) for c in self.chunks]


def plan_chunks(
    source: str,
    chunk_size: int,
    classes: Sequence[str] | None = None,
    class_map: dict[str, str] | None = None,
    min_classes: int = MIN_CLASSES,
) -> ChunkPlan:
    """The chunks of a folder of class folders (the same checks as reading it: an empty class
    folder or a nested folder is an :class:`IngestError`). Only names and file sizes and times are
    read."""
    root = Path(source).expanduser()
    if not root.is_dir():
        raise IngestError(
            f"{root}: not a folder (rule: the fan-out path reads a folder of class folders; an "
            ".npz is read by the single ingest step: set fan_out to null)"
        )
    class_names, files = list_folder(root, classes, class_map, min_classes)
    chunks: list[Chunk] = []
    by_folder: dict[str, tuple[int, list[Path]]] = {}
    for p, label in files:
        by_folder.setdefault(p.parent.name, (label, []))[1].append(p)
    for folder, (label, paths) in by_folder.items():
        for run in cut(entries(root / folder, paths), chunk_size):
            chunks.append(Chunk(folder, label, tuple(rel for _, rel, _ in run), _digest(run)))
    return ChunkPlan(str(root), class_names, chunks)


def chunk_files(spec: dict) -> list[Path]:
    """The files of the chunk ``spec`` names, found again by the same rule, after checking that
    they are still the files it was planned with (an :class:`IngestError` if one changed since)."""
    root = Path(spec["source"]).expanduser()
    folder = root / spec["folder"]
    where = f"chunk {spec['folder']}/{spec['first']} ({spec['files']} files)"
    if not folder.is_dir():
        raise IngestError(f"{where}: {folder} is gone (rule: the source does not change in a run)")
    for run in cut(entries(folder, class_files(folder)), int(spec["chunk_size"])):
        if run[0][0].name == spec["first"]:
            if _digest(run) != spec["digest"]:
                raise IngestError(
                    f"{where}: its files changed after the run listed them (rule: the source does "
                    "not change in a run; run again)"
                )
            return [p for p, _, _ in run]
    raise IngestError(
        f"{where}: no longer begins a chunk (rule: the source does not change in a run)"
    )


def read_chunk(spec: dict, sink: str | None = None) -> Dataset:
    """The chunk ``spec`` names, decoded (``sink`` as in ``read_folder``). A bad image raises an
    :class:`IngestError` naming the chunk, the file and the rule; no shard stays behind."""
    image_size = check_image_size(int(spec["image_size"]))
    files = chunk_files(spec)
    root = Path(spec["source"]).expanduser()
    try:
        return read_files(
            root,
            [(p, int(spec["label"])) for p in files],
            image_size,
            list(spec["class_names"]),
            folder_info(root, None),
            sink,
        )
    except IngestError as e:
        raise IngestError(f"chunk {spec['folder']}/{spec['first']}: {e}") from e


def merge_chunks(parts: Sequence[Dataset], info: dict) -> tuple[Dataset, np.ndarray]:
    """The chunks' samples as one dataset in the order the single ``ingest`` step reads them
    (class folder, then file name: the order of their ids' (folder, name) pairs), and for each of
    its rows, its row in the chunks' concatenation. No pixels are read: the merged images refer to
    the chunks' shards."""
    if not parts:
        raise ValueError("no chunks to merge")
    names = parts[0].class_names
    for p in parts[1:]:
        if p.class_names != names:
            raise ValueError(f"chunks with different classes: {p.class_names} and {names}")
    ids = [i for p in parts for i in p.ids]
    order = np.array(
        sorted(range(len(ids)), key=lambda r: tuple(ids[r].split("/", 1))), dtype=np.int64
    )
    images = parts[0].images
    for p in parts[1:]:
        images = concat_images(images, p.images)
    labels = np.concatenate([p.labels for p in parts])
    conversions: dict[str, int] = {}
    for p in parts:
        for k, v in p.info.get("conversions", {}).items():
            conversions[k] = conversions.get(k, 0) + int(v)
    whole = Dataset(images, labels, ids, list(names), {**info, "conversions": conversions})
    return whole.subset(order), order


class FanOut(Options):
    """The training pipeline's ``fan_out`` parameter: the source is read a chunk at a time."""

    WHERE = "parameters.fan_out"

    chunk_size: int = Field(5000, ge=1)  # files a chunk, on average

    @staticmethod
    def key(spec: dict) -> str:
        """A short stable id for a chunk's steps (hex: any orchestrator takes it)."""
        return hashlib.sha1(f"{spec['folder']}/{spec['first']}".encode()).hexdigest()[:12]
