"""Materializer for :class:`bloodcell.dataset.Dataset`: images as .npy shards (``bloodcell.shards``),
labels as .npy, the rest as JSON."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer

from bloodcell import plots, shards
from bloodcell.dataset import Dataset
from materializers._io import read_json, read_npy, write_bytes, write_json, write_npy


class DatasetMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (Dataset,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA

    def save(self, data: Dataset) -> None:
        written = shards.write_shards(self.uri, data.images)
        write_npy(self, "labels.npy", data.labels)
        write_json(self, "meta.json", {
            "image_shape": list(data.images.shape[1:]),
            "shards": [s.to_dict() for s in written],
            "ids": data.ids,
            "class_names": data.class_names,
            "info": data.info,
            "fingerprint": data.fingerprint,
        })

    def load(self, data_type: type[Any]) -> Dataset:
        meta = read_json(self, "meta.json")
        if "shards" in meta:
            images = shards.read_all(self.uri, [shards.Shard(**s) for s in meta["shards"]])
            images = images.reshape((len(images), *meta["image_shape"]))  # an empty set keeps its shape
        else:  # written before shards (one images.npy)
            images = read_npy(self, "images.npy")
        ds = Dataset(
            images=images,
            labels=read_npy(self, "labels.npy"),
            ids=meta["ids"],
            class_names=meta["class_names"],
            info=meta["info"],
        )
        if ds.fingerprint != meta["fingerprint"]:
            raise ValueError(f"dataset artifact at {self.uri} is corrupt: its content no longer matches its fingerprint")
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
            **{k: v for k, v in data.info.items() if k in ("split", "generated", "outliers_removed", "augmentation_engine",
                                                        "class_map", "sets")},
        }

    def save_visualizations(self, data: Dataset) -> dict[str, VisualizationType]:
        if len(data) == 0:
            return {}
        if not data.labelled:
            strip = plots.image_strip(data.images, [i[-18:] for i in data.ids], max_images=48)
            return {write_bytes(self, "samples.png", strip): VisualizationType.IMAGE}
        counts = write_bytes(self, "class_counts.png", plots.class_count_bars(data.class_counts(), f"{len(data)} samples per class"))
        grid = write_bytes(self, "samples.png", plots.sample_grid(data.images, np.asarray(data.labels), data.class_names))
        return {counts: VisualizationType.IMAGE, grid: VisualizationType.IMAGE}
