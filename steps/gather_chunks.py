"""Fan-out path, step 1d: the chunks as one dataset artifact, in the order ``ingest`` reads the
source, checked by the ``ingest`` expectation suite on the merged tables. It outputs ``dataset``
as ``ingest`` does, with the same fingerprint for the same source; no pixels are copied or read
(the merged manifest points at the chunks' shards)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
from zenml import step

from bloodcell.data.chunks import merge_chunks
from bloodcell.data.dataset import Dataset
from bloodcell.data.features import ImageFeatures
from bloodcell.data.ingest import folder_info
from bloodcell.data.stain import stain_params
from materializers.dataset_materializer import DatasetMaterializer
from steps._cache import content_cache_policy
from steps.ingest import checked


@step(
    cache_policy=content_cache_policy(__name__),
    output_materializers={"dataset": DatasetMaterializer},
)
def gather_chunks(
    chunks: list[Dataset],
    features: list[ImageFeatures],
    source: str,
    image_size: int = 96,
    class_map: dict[str, str] | None = None,
    stain_ranges: dict[str, list[float]] | None = None,
) -> Annotated[Dataset, "dataset"]:
    """``chunks`` and their ``features`` in the same order (the parameters are ``ingest``'s)."""
    params = stain_params(stain_ranges)
    if [i for f in features for i in f.ids] != [i for c in chunks for i in c.ids]:
        raise ValueError("the chunks' features are not of the chunks' images, in their order")
    ds, order = merge_chunks(chunks, folder_info(Path(source).expanduser(), class_map))
    means = np.concatenate([f.means for f in features])[order]
    stds = np.concatenate([f.stds for f in features])[order]
    return checked(ds, source, image_size, params, stats=(means, stds))
