"""Materializer for :class:`bloodcell.data.dataset.Dataset`: images as .npy shards
(``bloodcell.data.shards``), labels, row index and row hashes as .npy, the rest as JSON.

A dataset whose images are already in shards (a loaded artifact, or a subset of one) is saved as
a manifest over those shards, which stay in the artifact that wrote them: a split or a filtered
set copies no pixels. Images made in memory are written as new shards of this artifact. Loading
gives ``ShardedImages``: no pixels are read until a step asks for them."""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np
from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer

from bloodcell.data import shards
from bloodcell.data.dataset import Dataset
from bloodcell.data.sharded_images import ShardedImages
from bloodcell.evaluation import plots
from materializers._io import read_json, read_npy, write_bytes, write_json, write_npy


def _pixel_fingerprint(ds: Dataset) -> str:
    """The fingerprint dataset artifacts carried before shards: SHA-256 over all the pixels."""
    h = hashlib.sha256(repr((ds.images.shape, list(ds.class_names))).encode())
    h.update(np.ascontiguousarray(ds.images).tobytes())
    h.update(ds.labels.astype("<i8").tobytes())
    h.update("\n".join(ds.ids).encode())
    return h.hexdigest()


VIEW_SAMPLE = 2000  # images the dashboard pictures draw from


class DatasetMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (Dataset,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def save(self, data: Dataset) -> None:
        entries, index = self._write_images(data.images)
        write_npy(self, "labels.npy", data.labels)
        write_npy(self, "index.npy", index)
        write_npy(self, "hashes.npy", data.row_hashes())
        write_json(
            self,
            "meta.json",
            {
                "image_shape": list(data.images.shape[1:]),
                "shards": entries,
                "ids": data.ids,
                "class_names": data.class_names,
                "info": data.info,
                "fingerprint": data.fingerprint,
            },
        )

    def _write_images(
        self, images: np.ndarray | ShardedImages
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The shard entries (``folder`` set where a shard belongs to another artifact) and the rows
        into them. Only the parts the rows use are kept."""
        if not isinstance(images, ShardedImages):
            return [s.to_dict() for s in shards.write_shards(self.uri, images)], np.arange(
                len(images), dtype=np.int64
            )
        starts = images.part_offsets()
        part_of = images.part_of_rows()
        entries: list[dict[str, Any]] = []
        new_start = {}
        rows = written = 0  # rows in the entries so far; shards this artifact wrote
        for k in np.unique(part_of):
            part = images.parts[k]
            new_start[k] = rows
            rows += len(part) if isinstance(part, np.ndarray) else part[1].count
            if isinstance(part, np.ndarray):
                new = shards.write_shards(self.uri, part, first=written)
                written += len(new)
                entries += [s.to_dict() for s in new]
            elif part[0].rstrip("/") == self.uri.rstrip(
                "/"
            ):  # written here as the step ran (ingest)
                entries.append(part[1].to_dict())
            else:
                entries.append({"folder": part[0], **part[1].to_dict()})
        index = (
            np.array([new_start[k] for k in part_of], dtype=np.int64)
            + images.index
            - starts[part_of]
        )
        return entries, index

    def load(self, data_type: type[Any]) -> Dataset:
        meta = read_json(self, "meta.json")
        if (
            "shards" not in meta
        ):  # written before shards: one images.npy, and the fingerprint of then
            ds = Dataset(
                read_npy(self, "images.npy"),
                read_npy(self, "labels.npy"),
                meta["ids"],
                meta["class_names"],
                meta["info"],
            )
            if _pixel_fingerprint(ds) != meta["fingerprint"]:
                raise ValueError(
                    f"dataset artifact at {self.uri} is corrupt: its content no longer matches its "
                    "fingerprint"
                )
            return ds
        parts = [(e.pop("folder", None) or self.uri, shards.Shard(**e)) for e in meta["shards"]]
        images = ShardedImages(
            parts, meta["image_shape"], read_npy(self, "index.npy"), read_npy(self, "hashes.npy")
        )
        ds = Dataset(
            images=images,
            labels=read_npy(self, "labels.npy"),
            ids=meta["ids"],
            class_names=meta["class_names"],
            info=meta["info"],
        )
        if ds.fingerprint != meta["fingerprint"]:
            raise ValueError(
                f"dataset artifact at {self.uri} is corrupt: its content no longer matches its "
                "fingerprint"
            )
        return ds

    def compute_content_hash(self, data: Dataset) -> str:
        return data.fingerprint

    def extract_metadata(self, data: Dataset) -> dict[str, Any]:
        conversions = data.info.get("conversions", {})
        return {
            "samples": len(data),
            "image_shape": list(data.images.shape[1:]),
            "class_names": list(data.class_names),
            "class_counts": data.class_counts(),
            "labelled": data.labelled,
            "fingerprint": data.fingerprint,
            "source": str(data.info.get("source", "")),
            "conversions": {k: int(v) for k, v in conversions.items()},
            "conversions_total": int(sum(conversions.values())),
            **{
                k: v
                for k, v in data.info.items()
                if k
                in (
                    "split",
                    "generated",
                    "outliers_removed",
                    "augmentation_engine",
                    "class_map",
                    "sets",
                )
            },
        }

    def save_visualizations(self, data: Dataset) -> dict[str, VisualizationType]:
        if len(data) == 0:
            return {}
        if not data.labelled:
            first = data.subset(np.arange(min(len(data), 48)))
            strip = plots.image_strip(
                np.asarray(first.images), [i[-18:] for i in first.ids], max_images=48
            )
            return {write_bytes(self, "samples.png", strip): VisualizationType.IMAGE}
        counts = write_bytes(
            self,
            "class_counts.png",
            plots.class_count_bars(data.class_counts(), f"{len(data)} samples per class"),
        )
        view = data.preview(
            VIEW_SAMPLE, seed=0
        )  # the grid needs a few images a class: a shard a class at most
        grid = write_bytes(
            self,
            "samples.png",
            plots.sample_grid(np.asarray(view.images), np.asarray(view.labels), data.class_names),
        )
        return {counts: VisualizationType.IMAGE, grid: VisualizationType.IMAGE}
