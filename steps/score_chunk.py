"""Fan-out path, step 1c: the per-image features of one chunk that ``filter_outliers`` and the
``ingest`` expectations score (``bloodcell.data.features``)."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from bloodcell.data.dataset import Dataset
from bloodcell.data.features import ImageFeatures, image_features
from bloodcell.data.outliers import OutlierConfig
from materializers.features_materializer import ImageFeaturesMaterializer
from steps._cache import content_cache_policy


@step(
    cache_policy=content_cache_policy(__name__),
    # a chunk is a part: its pictures would cost more than its work (the gathered dataset has
    # them), so the dashboard shows a chunk's metadata only
    enable_artifact_visualization=False,
    output_materializers={"chunk_features": ImageFeaturesMaterializer},
)
def score_chunk(
    chunk_dataset: Dataset, thumb: int = OutlierConfig().thumb
) -> Annotated[ImageFeatures, "chunk_features"]:
    """Colour, texture, perceptual hash and thumbnail of every image of the chunk (``thumb``: the
    ``filter_outliers`` step's thumbnail size; the pipeline passes it)."""
    return image_features(chunk_dataset.images, chunk_dataset.ids, thumb)
