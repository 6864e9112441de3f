"""Materializer for :class:`bloodcell.data.features.ImageFeatures`: each array as .npy, the ids
and thumbnail size as JSON, a picture of the features for the dashboard."""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np
from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer

from bloodcell.data.features import ImageFeatures, StoredArray
from bloodcell.evaluation import plots
from materializers._io import read_json, read_npy, write_bytes, write_json, write_npy

ARRAYS = ("means", "stds", "texture", "phash", "thumbs")


class ImageFeaturesMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (ImageFeatures,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS

    def save(self, data: ImageFeatures) -> None:
        for name in ARRAYS:
            write_npy(self, f"{name}.npy", np.asarray(getattr(data, name)))
        write_json(self, "meta.json", {"ids": data.ids, "thumb": data.thumb})

    def load(self, data_type: type[Any]) -> ImageFeatures:
        meta = read_json(self, "meta.json")
        arrays = {name: read_npy(self, f"{name}.npy") for name in ARRAYS if name != "thumbs"}
        # the thumbnails are most of the bytes: read when the filter scores this chunk
        thumbs = StoredArray(lambda: read_npy(self, "thumbs.npy"), len(meta["ids"]))
        return ImageFeatures(ids=meta["ids"], thumb=int(meta["thumb"]), thumbs=thumbs, **arrays)

    def compute_content_hash(self, data: ImageFeatures) -> str:
        h = hashlib.sha256(f"{data.thumb}\n".encode() + "\n".join(data.ids).encode())
        for name in ARRAYS:
            h.update(np.ascontiguousarray(np.asarray(getattr(data, name))).data)  # no copy
        return h.hexdigest()

    def extract_metadata(self, data: ImageFeatures) -> dict[str, Any]:
        return {
            "images": len(data),
            "thumb": data.thumb,
            "fingerprint": self.compute_content_hash(data),
        }

    def save_visualizations(self, data: ImageFeatures) -> dict[str, VisualizationType]:
        if len(data) == 0:
            return {}
        png = plots.feature_summary(data.texture, data.means, f"{len(data)} images")
        return {write_bytes(self, "features.png", png): VisualizationType.IMAGE}
